"""The models the app offers, with where their weights come from and published figures.

Figures are open_clip's own (docs/openclip_results.csv and
docs/openclip_retrieval_results.csv in mlfoundations/open_clip): ImageNet-1k zero-shot
top-1 and MSCOCO text-to-image recall@5.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imagesearch.errors import InvalidModelId


@dataclass(frozen=True, slots=True)
class KnownModel:
    arch: str
    tag: str
    hf_repo: str  # Hugging Face repository holding open_clip_model.safetensors
    imagenet_top1: float
    coco_image_r5: float | None  # None where no figure is published
    note: str
    needs_hf_tokenizer: bool = False

    @property
    def id(self) -> str:
        return f"{self.arch}/{self.tag}"


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel("ViT-B-32-256", "datacomp_s34b_b86k",
               "laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K",
               0.7281, 0.6543, "default: best quality among the fast ViT-B/32 models"),
    KnownModel("ViT-B-32", "laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
               0.6656, 0.6543, "fastest; strong on text queries"),
    KnownModel("ViT-B-32", "datacomp_xl_s13b_b90k", "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K",
               0.6917, 0.6235, "fast"),
    KnownModel("ViT-B-16", "datacomp_xl_s13b_b90k", "laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K",
               0.7349, 0.6595, "about 4x slower than ViT-B-32"),
    KnownModel("ViT-B-16-SigLIP", "webli", "timm/ViT-B-16-SigLIP",
               0.7604, 0.7244, "SigLIP: best text retrieval of the base models, ~4x slower",
               needs_hf_tokenizer=True),
    # MobileCLIP2 (Apple, 2025): ImageNet figures from the model cards; no COCO retrieval
    # figure is published for them. Speeds here: README "Choosing the default model".
    KnownModel("MobileCLIP2-S0", "dfndr2b", "timm/MobileCLIP2-S0-OpenCLIP",
               0.715, None, "fastest: a small image tower (11M parameters)"),
    KnownModel("MobileCLIP2-S2", "dfndr2b", "timm/MobileCLIP2-S2-OpenCLIP",
               0.772, None, "fast and accurate: ImageNet above ViT-B-16"),
    KnownModel("ViT-L-14", "datacomp_xl_s13b_b90k", "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K",
               0.7921, 0.7003, "large: for a GPU"),
)

WEIGHTS_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_ID_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def parse_model_id(model_id: str) -> tuple[str, str]:
    """'ARCH/TAG' to (arch, tag).

    Raises:
        InvalidModelId: the id is not of that form (a ValueError too).
    """
    arch, sep, tag = model_id.partition("/")
    # Each part becomes a folder name under the models folder (and a config file name):
    # letters, digits and . _ + - only, starting with a letter or digit, so no id (from
    # the command line or an archive's manifest) can name a path outside it.
    if not sep or not _ID_PART.fullmatch(arch) or not _ID_PART.fullmatch(tag):
        raise InvalidModelId(f"model ids look like ARCH/TAG (e.g. ViT-B-32/laion2b_s34b_b79k), "
                         f"not {model_id!r}")
    return arch, tag


def known_model(model_id: str) -> KnownModel | None:
    return next((m for m in KNOWN_MODELS if m.id == model_id), None)
