"""Reading photos: decode fast and safely, and turn them into model input.

This module imports no torch so decode worker processes start quickly.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import xxhash
from PIL import Image, ImageOps, UnidentifiedImageError

from imagesearch.core.feature_codec import encode_features
from imagesearch.core.local_features import (
    QUERY_COUNT,
    QUERY_MAX_SIDE,
    FeatureMode,
    LocalFeatures,
    extract,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff",
    ".heic", ".heif", ".avif",
})
_HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".avif"})

_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_DATETIME_DIGITIZED = 0x9004
_DATETIME = 0x0132


@dataclass(frozen=True, slots=True)
class PreprocessSpec:
    """How a model wants its input; mirrors open_clip's preprocess config."""

    size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"  # bicubic | bilinear
    resize_mode: str = "shortest"  # shortest | squash | longest
    fill_color: int = 0


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """A decoded photo's facts and model-ready pixels, or why it failed."""

    path: Path
    size: int = 0
    mtime: float = 0.0
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    captured_at: datetime | None = None
    pixels: np.ndarray | None = None  # uint8 HxWx3, already resized for the model
    error: str | None = None
    local_features: bytes | None = None  # stored form (core/feature_codec), when asked for
    feature_count: int = 0


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def hash_bytes(data: bytes) -> str:
    """Content hash used to recognise a moved file: 128-bit xxh3, hex."""
    return xxhash.xxh3_128_hexdigest(data)


def hash_file(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


_heif_state: bool | None = None


def _ensure_heif() -> bool:
    """Register the HEIC/AVIF opener once; False when pillow-heif is missing."""
    global _heif_state
    if _heif_state is None:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _heif_state = True
        except ImportError:
            _heif_state = False
    return _heif_state


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """What the file says about itself: format, displayed size, capture time."""

    format: str | None
    width: int
    height: int
    captured_at: datetime | None


def open_image(data: bytes, name: str, draft_size: int | None = None,
               draft_long_side: int = 0) -> tuple[Image.Image, ImageFacts]:
    """Decode bytes to an upright RGB image, shrinking JPEGs in the decoder when allowed.

    Args:
        draft_size: both sides stay at least this large when a JPEG is decoded reduced.
        draft_long_side: and the longer side at least this large.

    Raises:
        ValueError: with a readable reason when the bytes are not a usable image.
    """
    if not data:
        raise ValueError("empty file (0 bytes)")
    ext = os.path.splitext(name)[1].lower()
    if not _ensure_heif() and ext in _HEIF_EXTENSIONS:
        raise ValueError("HEIC/HEIF/AVIF support needs the pillow-heif package "
                         "(pip install pillow-heif)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
            if orientation in (5, 6, 7, 8):
                w, h = h, w
            facts = ImageFacts(img.format, w, h, capture_time(img))
            if draft_size is not None and img.format == "JPEG":
                # The JPEG decoder scales by 1/2, 1/4 or 1/8 for free; both sides stay >= draft.
                img.draft("RGB", _draft_request(img.size, draft_size, draft_long_side))
            img.load()
            return to_rgb(ImageOps.exif_transpose(img)), facts
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"refused: declared size is too large to decode safely ({exc})") \
            from exc
    except UnidentifiedImageError as exc:
        raise ValueError("not an image Pillow can read (unrecognised or unsupported format)") \
            from exc
    except (OSError, SyntaxError, EOFError, ValueError) as exc:
        msg = str(exc) or type(exc).__name__
        raise ValueError(f"corrupt or truncated image data: {msg}") from exc


def _draft_request(size: tuple[int, int], short: int, long: int) -> tuple[int, int]:
    """The (w, h) to ask Pillow's draft for: short side >= short, long side >= long."""
    w, h = size
    if w >= h:
        return max(long, short), short
    return short, max(long, short)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha onto white, 16-bit scaled, CMYK/palettes converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)) \
            .convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return Image.fromarray(((arr - lo) * scale).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def capture_time(img: Image.Image) -> datetime | None:
    """When the photo was taken, from EXIF, if recorded and sane."""
    try:
        exif = img.getexif()
    except Exception:
        return None
    values: list[object] = []
    try:
        sub = exif.get_ifd(_EXIF_IFD)
        values += [sub.get(_DATETIME_ORIGINAL), sub.get(_DATETIME_DIGITIZED)]
    except Exception:
        pass
    values.append(exif.get(_DATETIME))
    for value in values:
        if isinstance(value, bytes):
            value = value.decode("ascii", "ignore")
        if isinstance(value, str):
            try:
                return datetime.strptime(value.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
            except ValueError:
                continue
    return None


def _resample(spec: PreprocessSpec) -> Image.Resampling:
    return Image.Resampling.BILINEAR if spec.interpolation == "bilinear" \
        else Image.Resampling.BICUBIC


def model_pixels(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize and crop like open_clip's eval transform; returns uint8 HxWx3."""
    s = spec.size
    w, h = img.size
    if spec.resize_mode == "squash":
        out = img.resize((s, s), _resample(spec))
    elif spec.resize_mode == "longest":
        ratio = max(w / s, h / s)
        nw, nh = max(1, round(w / ratio)), max(1, round(h / ratio))
        resized = img.resize((nw, nh), _resample(spec))
        out = Image.new("RGB", (s, s), (spec.fill_color,) * 3)
        out.paste(resized, ((s - nw) // 2, (s - nh) // 2))
    else:
        # torchvision Resize(int): the short side becomes s, the long side is truncated.
        if w <= h:
            nw, nh = s, int(s * h / w)
        else:
            nw, nh = int(s * w / h), s
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), _resample(spec))
        top = round((nh - s) / 2.0)
        left = round((nw - s) / 2.0)
        out = img.crop((left, top, left + s, top + s))
    return np.asarray(out.convert("RGB"), dtype=np.uint8)


def normalize(batch: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 NxHxWx3 to float32 Nx3xHxW with the model's mean and std."""
    x = batch.astype(np.float32) * (1.0 / 255.0)
    x -= np.asarray(spec.mean, dtype=np.float32)
    x /= np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def decode_for_model(path: Path, spec: PreprocessSpec | None,
                     features: FeatureMode | None = None) -> DecodedImage:
    """Read one file once: stat, hash, decode, orient; then resize for the model (``spec``)
    and find local features (``features``), either or both. Never raises."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            return DecodedImage(path, error="is a folder, not a file")
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        reason = "broken symbolic link" if os.path.islink(path) else \
            "file disappeared before it could be read"
        return DecodedImage(path, error=reason)
    except PermissionError:
        return DecodedImage(path, error="permission denied: cannot read the file")
    except OSError as exc:
        return DecodedImage(path, error=f"cannot read the file: {exc.strerror or exc}")
    base = DecodedImage(path, size=st.st_size, mtime=st.st_mtime, content_hash=hash_bytes(data))
    try:
        img, facts = open_image(data, path.name, draft_size=spec.size if spec else 64,
                                draft_long_side=features.max_side if features else 0)
        pixels = model_pixels(img, spec) if spec is not None else None
    except ValueError as exc:
        return _failed(base, str(exc))
    except Exception as exc:
        return _failed(base, f"cannot decode: {type(exc).__name__}: {exc}")
    blob, count = None, 0
    if features is not None:
        # A photo whose features cannot be found is still a photo: it is stored without.
        try:
            found = extract(img, features.max_side, features.count,
                            (facts.width, facts.height))
            blob, count = encode_features(found, features.pq_subquantizers), len(found)
        except Exception as exc:  # OpenCV raises cv2.error, among others
            log.warning("no local features for %s: %s", path, exc)
    return DecodedImage(path, st.st_size, st.st_mtime, base.content_hash, facts.width,
                        facts.height, facts.format, facts.captured_at, pixels,
                        local_features=blob, feature_count=count)


def _failed(base: DecodedImage, error: str) -> DecodedImage:
    return DecodedImage(base.path, base.size, base.mtime, base.content_hash, error=error)


def read_query(source: Path | bytes) -> tuple[bytes, str]:
    """The bytes of a query image from a file or raw bytes (drop, paste).

    Raises:
        ValueError: the file cannot be read, with the reason.
    """
    if isinstance(source, bytes):
        return source, "query"
    try:
        return Path(source).read_bytes(), Path(source).name
    except OSError as exc:
        raise ValueError(f"cannot read {source}: {exc.strerror or exc}") from exc


def load_query_image(source: Path | bytes, spec: PreprocessSpec) -> np.ndarray:
    """Pixels for a query image from a file or raw bytes (drop, paste).

    Raises:
        ValueError: the file cannot be read as an image, with the reason.
    """
    data, name = read_query(source)
    img, _ = open_image(data, name, draft_size=spec.size)
    return model_pixels(img, spec)


def load_query_features(source: Path | bytes) -> LocalFeatures:
    """A query image's local features: many, found at a high resolution.

    Raises:
        ValueError: the file cannot be read as an image, with the reason.
    """
    data, name = read_query(source)
    img, facts = open_image(data, name, draft_size=64, draft_long_side=QUERY_MAX_SIDE)
    return extract(img, QUERY_MAX_SIDE, QUERY_COUNT, (facts.width, facts.height))
