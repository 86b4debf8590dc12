"""Which model is active, whether its weights are here, and loading it once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from imagesearch.config import DEFAULT_MODEL, Settings
from imagesearch.core.ames.registry import AMES_WEIGHTS, VARIANTS, AmesVariant, known_weight
from imagesearch.core.encoder import Encoder
from imagesearch.core.encoder_loading import known_choice, load_encoder
from imagesearch.core.model_archive import (
    ArchiveManifest,
    install_archive,
    is_model_archive,
    pack_model,
)
from imagesearch.core.model_registry import KNOWN_MODELS, known_model, parse_model_id
from imagesearch.core.weights import DownloadProgress, WeightStore
from imagesearch.domain import ModelInfo
from imagesearch.errors import ModelFileError

if TYPE_CHECKING:  # AMES's modules import PIL and its network code: not for a cold query
    from imagesearch.core.ames.models import AmesPaths


class ModelManager:
    """Loads the configured encoder lazily and shares it between indexing and search."""

    def __init__(self, settings: Settings, encoder: Encoder | None = None) -> None:
        self.settings = settings
        self.store = WeightStore(settings.models_dir)
        self._encoder = encoder
        self._lock = threading.Lock()
        self._preloading: threading.Thread | None = None
        self._cancel = threading.Event()  # stops a first-time runtime probe

    @property
    def model_id(self) -> str:
        return self._encoder.model_id if self._encoder is not None else self.settings.model_id

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def weights_present(self) -> bool:
        return self._encoder is not None or self.store.installed(self.model_id) is not None

    def encoder(self, allow_download: bool = False,
                progress: DownloadProgress | None = None) -> Encoder:
        """The active encoder, loading it on first use.

        Raises:
            ModelUnavailable: weights missing (and not downloaded).
            ModelLoadError: weights present but unusable.
        """
        with self._lock:
            if self._encoder is None:
                self._encoder = load_encoder(
                    self.settings.model_id, self.store, device=self.settings.device,
                    precision=self.settings.precision, allow_download=allow_download,
                    progress=progress, cancel=self._cancel)
            return self._encoder

    def preload(self, towers: tuple[str, ...]) -> None:
        """Load the encoder and the named towers ("visual", "textual") in the background.

        A cold command-line query starts this before it opens the catalog, so loading
        the model overlaps the imports and reads that come first. Errors are left to the
        call that needs the encoder, which meets them again and reports them.
        """
        if not self.weights_present():
            return

        def run() -> None:
            try:
                encoder = self.encoder()
                warm = getattr(encoder, "warm", None)
                if warm is not None:
                    warm(towers)
            except Exception:  # reported by the foreground call
                return

        self._preloading = threading.Thread(target=run, name="imagesearch-preload",
                                            daemon=True)
        self._preloading.start()

    def cancel_loading(self) -> None:
        """Stop a first-time runtime probe now (closing); a later load probes again."""
        self._cancel.set()

    def close(self) -> None:
        """Stop a probe, and wait for a background load still under way: a process must
        not end while a runtime's threads are starting (ONNX Runtime aborts it then)."""
        self._cancel.set()
        thread, self._preloading = self._preloading, None
        if thread is not None:
            thread.join()

    def download(self, model_id: str | None = None,
                 progress: DownloadProgress | None = None) -> Path:
        mid = model_id or self.model_id
        ames = known_weight(mid)
        if ames is not None:
            return self.store.download_file(mid, ames.url, ames.filename, progress).path
        return self.store.download(mid, progress).path

    # AMES ---------------------------------------------------------------------------------

    def ames_variant(self) -> AmesVariant | None:
        """The AMES checkpoint the settings name (None for an unknown name)."""
        return VARIANTS.get(self.settings.ames_model)

    def ames_missing(self) -> list[str]:
        """Ids of the AMES weights the configured variant needs and does not have."""
        variant = self.ames_variant()
        if variant is None:
            return []
        return [w.id for w in variant.weights if self.store.installed(w.id) is None]

    def ames_paths(self) -> AmesPaths | None:
        """Where the configured AMES variant's three checkpoints are, when all are here."""
        variant = self.ames_variant()
        if variant is None:
            return None
        found = [self.store.installed(w.id) for w in variant.weights]
        if any(f is None for f in found):
            return None
        from imagesearch.core.ames.models import AmesPaths

        backbone, detector, matcher = (f.path for f in found if f is not None)
        return AmesPaths(backbone, detector, matcher)

    def install(self, checkpoint: Path, model_id: str | None = None,
                config: Path | None = None, sha256: str | None = None,
                progress: DownloadProgress | None = None) -> ModelInfo:
        """Install a checkpoint file, or an archive written by pack() on another computer.

        An archive names its model; ``model_id``, when given, must be that one.

        Raises:
            ModelFileError: unreadable file; an archive that is damaged, unsafe or for
                another model; ``config`` or ``sha256`` given with an archive.
            ChecksumMismatch: the file, or a file in the archive, is not what it should be.
        """
        if checkpoint.suffix.lower() == ".tar" or is_model_archive(checkpoint):
            if config is not None or sha256 is not None:
                raise ModelFileError("a model archive carries its own config and checksums; "
                                     "install it without --config or --sha256")
            weights = install_archive(self.store, checkpoint, model_id, progress)
            return self._info(weights.model_id, weights.path, weights.size)
        mid = model_id or self.model_id
        parse_model_id(mid)
        weights = self.store.install_file(mid, checkpoint, config, sha256, progress)
        return self._info(mid, weights.path, weights.size)

    def pack(self, model_id: str, dest: Path,
             progress: DownloadProgress | None = None) -> ArchiveManifest:
        """Write an installed model to an archive that install() accepts elsewhere."""
        return pack_model(self.store, model_id, dest, progress)

    def models(self) -> list[ModelInfo]:
        """Known models plus any installed by hand, with what is on disk."""
        ids = [m.id for m in KNOWN_MODELS] + [w.id for w in AMES_WEIGHTS]
        ids += [i for i in self.store.installed_ids() if i not in ids]
        out = []
        for mid in ids:
            w = self.store.installed(mid)
            out.append(self._info(mid, w.path if w else None, w.size if w else None))
        return out

    def _info(self, mid: str, path: Path | None, size: int | None) -> ModelInfo:
        arch, tag = parse_model_id(mid)
        km = known_model(mid)
        desc = ""
        ames = known_weight(mid)
        if km is not None:
            coco = "n/a" if km.coco_image_r5 is None else f"{km.coco_image_r5:.1%}"
            desc = f"ImageNet {km.imagenet_top1:.1%}, COCO text→image R@5 {coco}; {km.note}"
        elif ames is not None:
            desc = f"{ames.note}; ~{ames.approx_mb} MB from {ames.url}"
        return ModelInfo(id=mid, arch=arch, tag=tag, installed=path is not None, path=path,
                         size_bytes=size, description=desc, is_default=mid == DEFAULT_MODEL,
                         runtime=self.runtime_summary(mid) if path is not None else "")

    def runtime_summary(self, model_id: str | None = None) -> str:
        """How the model runs on this machine and the probe's figures; "" if not probed."""
        mid = model_id or self.model_id
        encoder = self._encoder
        if encoder is not None and encoder.model_id == mid and encoder.device != "cpu":
            return f"{encoder.device}, torch {encoder.precision}"
        choice = known_choice(self.store, mid)
        return choice.summary() if choice is not None else ""

    def device(self) -> str:
        return self._encoder.device if self._encoder is not None else self.settings.device
