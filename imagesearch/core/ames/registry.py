"""The AMES weights the app can use: where each is published, and the fusion constants.

No checksums are published for these files (neither by Meta for DINOv2 nor by the AMES
authors), so none is pinned here: the sha256 of the first download (or installed file)
is recorded in its manifest, like every installed model's, and shown by
`imagesearch models list`.
"""

from __future__ import annotations

from dataclasses import dataclass

AMES_ARCH = "ames"
_AMES_NETWORKS = "http://ptak.felk.cvut.cz/personal/sumapave/public/ames/networks/"


@dataclass(frozen=True, slots=True)
class AmesWeight:
    tag: str
    filename: str
    url: str
    approx_mb: int
    note: str

    @property
    def id(self) -> str:
        return f"{AMES_ARCH}/{self.tag}"


BACKBONE = AmesWeight(
    "dinov2-vitb14-reg4", "dinov2_vitb14_reg4_pretrain.pth",
    "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
    346, "DINOv2 ViT-B/14 with registers (Meta): the local descriptors' backbone")
DETECTOR = AmesWeight(
    "dinov2-detector", "dinov2_detector.pt", _AMES_NETWORKS + "dinov2_detector.pt",
    3, "AMES detector for DINOv2: which patches become descriptors")
MATCHER_DIST = AmesWeight(
    "dinov2-ames-dist", "dinov2_ames_dist.pt", _AMES_NETWORKS + "dinov2_ames_dist.pt",
    4, "AMES matcher on 128-bit codes (default: 1.5 KB a photo)")
MATCHER_FP = AmesWeight(
    "dinov2-ames", "dinov2_ames.pt", _AMES_NETWORKS + "dinov2_ames.pt",
    4, "AMES matcher on full-precision descriptors (float16 stored: ~77 KB a photo)")

AMES_WEIGHTS: tuple[AmesWeight, ...] = (BACKBONE, DETECTOR, MATCHER_DIST, MATCHER_FP)


@dataclass(frozen=True, slots=True)
class AmesVariant:
    """A matcher checkpoint with how it is used: fusion constants and descriptor counts."""

    name: str  # the value of Settings.ames_model
    matcher: AmesWeight
    lam: float  # weight of the global similarity in the fused score
    gamma: float  # temperature applied to the matcher's logit
    photo_n: int  # descriptors stored per library photo

    @property
    def weights(self) -> tuple[AmesWeight, ...]:
        return (BACKBONE, DETECTOR, self.matcher)


# lambda and gamma: the authors' values tuned on GLDv2's public test split (the README of
# pavelsuma/ames, table "Hyperparameters used for our best performing AMES setup"; its
# first release listed 0.55 / 0.30 for the full-precision model, the current one 0.50 /
# 0.20; the binary model's 0.35 / 0.10 are unchanged). Tuned against their global
# descriptor's cosine, not CLIP's: see the README's AMES section.
VARIANTS: dict[str, AmesVariant] = {
    "dist": AmesVariant("dist", MATCHER_DIST, 0.35, 0.10, 80),
    "fp": AmesVariant("fp", MATCHER_FP, 0.50, 0.20, 50),
}
DEFAULT_VARIANT = "dist"


def known_weight(model_id: str) -> AmesWeight | None:
    return next((w for w in AMES_WEIGHTS if w.id == model_id), None)
