"""Settings: where data lives and how the app runs. Built once at start-up and passed down."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

APP_NAME = "imagesearch"

# Chosen by measurement; README "Choosing the default model" has the figures.
DEFAULT_MODEL = "ViT-B-32-256/datacomp_s34b_b86k"

SETTINGS_FILE = "settings.json"
STORAGE_MODES = ("standard", "compact")  # README "Compact library"
_COUNTS = ("shortlist", "weight_free_shortlist", "top_k")  # at least 1 when read from a file
_WRITTEN_WHEN_CHANGED = ("weight_free_shortlist",)  # settings no window shows


def default_library_dir() -> Path:
    """The catalog's home: $IMAGESEARCH_HOME, else the platform's user data folder."""
    env = os.environ.get("IMAGESEARCH_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_models_dir() -> Path:
    """Downloaded and installed weights: $IMAGESEARCH_MODELS, else the user cache folder."""
    env = os.environ.get("IMAGESEARCH_MODELS")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False)) / "models"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable. Persisted as JSON in the library folder."""

    library_dir: Path = field(default_factory=default_library_dir)
    models_dir: Path = field(default_factory=default_models_dir)
    model_id: str = DEFAULT_MODEL
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    batch_size: int = 32
    decode_workers: int = 0  # 0: chosen from the CPU count
    decode_timeout_s: float = 60.0  # one file's decode; past it the file "timed out reading"
    top_k: int = 60
    thumbnail_size: int = 192
    thumbnail_cache_mb: int = 500  # thumbnails on disk; the least recently used go past it
    image_weight: float = 0.5
    local_features: str = "compact"  # off | compact | detailed (core/local_features.py)
    # standard | compact: a compact library keeps each photo in at most 2 KB (product-
    # coded vectors, fewer details, no details index; services/stored_vectors.py).
    storage: str = "standard"
    rerank: str = "spatial"  # off | spatial | ames: how image queries are re-ranked
    shortlist: int = 100  # candidates re-ranked per image query, from each source
    # ... when the local features' index (ASMK) is the only source (no model installed, or
    # none of its vectors yet) and spatial verification the only judge: deeper is then
    # worth its time (README "A shortlist from the details alone"). Written to
    # settings.json only when changed, so that a later default reaches every library.
    weight_free_shortlist: int = 250
    ames_model: str = "dist"  # dist | fp: which AMES checkpoint (core/ames/registry.py)
    # Exact search while the library's vectors fit this many MB (and it has at most
    # 200,000 photos); approximate inverted lists beyond (core/index_family.py).
    index_memory_mb: int = 1024

    @property
    def catalog_path(self) -> Path:
        return self.library_dir / "catalog.sqlite3"

    @property
    def index_dir(self) -> Path:
        return self.library_dir / "index"

    @property
    def thumbnails_dir(self) -> Path:
        return self.library_dir / "thumbnails"

    @property
    def compact(self) -> bool:
        """The library keeps each photo in at most 2 KB (README, "Compact library")."""
        return self.storage == "compact"

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    # Persistence -------------------------------------------------------------------------

    _PERSISTED = ("model_id", "device", "precision", "batch_size", "decode_workers",
                  "decode_timeout_s", "top_k", "thumbnail_size", "thumbnail_cache_mb",
                  "image_weight", "local_features", "rerank", "shortlist",
                  "weight_free_shortlist", "ames_model",
                  "index_memory_mb", "storage")

    def save(self) -> None:
        """Write the user-editable settings atomically to the library folder."""
        self.library_dir.mkdir(parents=True, exist_ok=True)
        defaults = {f.name: f.default for f in fields(self)}
        data = {k: v for k, v in asdict(self).items() if k in self._PERSISTED
                and (k not in _WRITTEN_WHEN_CHANGED or v != defaults[k])}
        target = self.library_dir / SETTINGS_FILE
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, target)

    @classmethod
    def load(cls, library_dir: Path | None = None, **overrides: Any) -> Settings:
        """Defaults, then the saved file (if readable), then explicit overrides."""
        base = cls() if library_dir is None else cls(library_dir=library_dir)
        saved: dict[str, Any] = {}
        path = base.library_dir / SETTINGS_FILE
        if path.is_file():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    saved = loaded
            except (OSError, ValueError):
                saved = {}  # a damaged settings file falls back to defaults
        known = {f.name: f.type for f in fields(cls)}
        clean: dict[str, Any] = {}
        for key, value in saved.items():
            if key == "storage" and value not in STORAGE_MODES:
                continue  # a typo is not a choice: the default stands
            if key in _COUNTS and (isinstance(value, bool) or not isinstance(value, int)
                                   or value < 1):
                continue  # nor is a count of no candidates (or true)
            if key in cls._PERSISTED and key in known:
                default = getattr(base, key)
                if isinstance(value, type(default)) or (
                    isinstance(default, float) and isinstance(value, int)
                ):
                    clean[key] = type(default)(value)
        clean.update({k: v for k, v in overrides.items() if v is not None})
        return replace(base, **clean)
