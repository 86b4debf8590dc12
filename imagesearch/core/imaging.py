"""Reading photos: decode fast and safely, and turn them into model input.

This module imports no torch so decode worker processes start quickly.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, cast

import numpy as np
import xxhash
from PIL import Image, ImageFile, UnidentifiedImageError

from imagesearch.core.feature_codec import encode_features
from imagesearch.core.image_reading import (
    DECODE_BUDGET_BYTES,
    HEAD_BYTES,
    HashingReader,
    Readable,
    check_declared_size,
    check_heif_size,
    load_in_bands,
    prepare_pillow,
    raw_strips,
    shrink,
    sniff_format,
    stored_bytes,
)
from imagesearch.core.local_features import (
    QUERY_COUNT,
    QUERY_MAX_SIDE,
    FeatureMode,
    LocalFeatures,
    empty_features,
    extract,
)
from imagesearch.errors import InstallationError

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


def hash_file(path: Path) -> str:
    """Content hash used to recognise a moved file: 128-bit xxh3, hex, read in a stream."""
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


def open_image(source: bytes | Readable, name: str, draft_size: int | None = None,
               file_size: int | None = None, draft_long_side: int = 0
               ) -> tuple[Image.Image, ImageFacts]:
    """Decode to an upright RGB image, shrinking large ones while (or right after) decoding.

    ``source`` is read as needed, never whole: a file that is not an image fails on its
    first bytes, a declared size no real file can hold is refused before decoding, and
    decoded pixels stay within a fixed memory budget.

    Args:
        draft_size: the size the caller will scale to; larger images are decoded at (or
            shrunk to) about twice that on their short side.
        file_size: the source's size in bytes, when it is a file.
        draft_long_side: the long side is kept at least this large too (local features
            are found at a bounded long side).

    Raises:
        ValueError: with a readable reason when the bytes are not a usable image.
    """
    if isinstance(source, bytes):
        file_size, source = len(source), io.BytesIO(source)
    head = source.read(HEAD_BYTES)
    source.seek(0)
    if not head:
        raise ValueError("empty file (0 bytes)")
    ext = os.path.splitext(name)[1].lower()
    kind = sniff_format(head)
    if kind == "HEIF" or ext in _HEIF_EXTENSIONS:
        if not _ensure_heif():
            raise ValueError("HEIC/HEIF/AVIF support needs the pillow-heif package "
                             "(pip install pillow-heif)")
        check_heif_size(file_size)
    if kind is None:
        raise ValueError("not an image Pillow can read (unrecognised or unsupported format)")
    prepare_pillow()
    try:
        opened: ImageFile.ImageFile = Image.open(cast(IO[bytes], source))  # read/seek/tell
        w, h = opened.size
        check_declared_size(w, h, file_size)
        orientation = opened.getexif().get(0x0112, 1)
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        facts = ImageFacts(opened.format, w, h, capture_time(opened))
        if draft_size is not None and opened.format == "JPEG":
            # The JPEG decoder scales by 1/2, 1/4 or 1/8 for free; both sides stay >= draft.
            opened.draft("RGB", _draft_request(opened.size, draft_size, draft_long_side))
        img: Image.Image = opened
        if stored_bytes(opened) > DECODE_BUDGET_BYTES:
            strips = raw_strips(opened)
            if strips is None:
                raise ValueError(
                    f"refused: {opened.width}x{opened.height} pixels of {opened.format} "
                    f"would need {stored_bytes(opened) >> 20} MB to decode, over the "
                    f"{DECODE_BUDGET_BYTES >> 20} MB allowed")
            img = load_in_bands(opened, strips, source, draft_size)
        else:
            opened.load()
            # First: rotating and converting then copy less.
            img = shrink(opened, draft_size, draft_long_side)
        return to_rgb(_upright(img, orientation)), facts
    except ValueError as exc:
        if str(exc).startswith("refused"):
            raise
        raise ValueError(f"corrupt or truncated image data: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ValueError("not an image Pillow can read (unrecognised or unsupported format)") \
            from exc
    except (OSError, SyntaxError, EOFError) as exc:
        msg = str(exc) or type(exc).__name__
        raise ValueError(f"corrupt or truncated image data: {msg}") from exc


def _draft_request(size: tuple[int, int], short: int, long: int) -> tuple[int, int]:
    """The (w, h) to ask Pillow's draft for: short side >= short, long side >= long."""
    w, h = size
    if w >= h:
        return max(long, short), short
    return short, max(long, short)


# EXIF orientation -> the transpose that shows the photo upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(img: Image.Image, orientation: object) -> Image.Image:
    # From the orientation read at open: a shrunk copy no longer carries the EXIF block.
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return img if method is None else img.transpose(method)


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
    """Read one file once: stat, decode, orient, hash; then resize for the model (``spec``)
    and find local features (``features``), either or both. Never raises."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            return DecodedImage(path, error="is a folder, not a file")
        f = open(path, "rb")  # noqa: SIM115 - closed below, after the decode and the hash
    except FileNotFoundError:
        reason = "broken symbolic link" if os.path.islink(path) else \
            "file disappeared before it could be read"
        return DecodedImage(path, error=reason)
    except PermissionError:
        return DecodedImage(path, error="permission denied: cannot read the file")
    except OSError as exc:
        return DecodedImage(path, error=f"cannot read the file: {exc.strerror or exc}")
    base = DecodedImage(path, size=st.st_size, mtime=st.st_mtime)
    with f:
        reader = HashingReader(f)
        try:
            img, facts = open_image(reader, path.name,
                                    draft_size=spec.size if spec is not None else 64,
                                    file_size=st.st_size,
                                    draft_long_side=features.max_side if features else 0)
            pixels = model_pixels(img, spec) if spec is not None else None
            # Hashed as it was decoded (a failed file needs no hash: only indexed photos
            # are matched when moved).
            content_hash = reader.digest()
        except ValueError as exc:
            return _failed(base, str(exc))
        except OSError as exc:
            return _failed(base, f"cannot read the file: {exc.strerror or exc}")
        except Exception as exc:
            return _failed(base, f"cannot decode: {type(exc).__name__}: {exc}")
    blob, count = None, 0
    if features is not None:
        # A photo whose features cannot be found is still a photo: it is stored without.
        try:
            found = extract(img, features.max_side, features.count,
                            (facts.width, facts.height))
            blob, count = encode_features(found, features.codec), len(found)
        except InstallationError as exc:
            # Not the photo's fault: stored without details, it would never be retried.
            log.warning("no local features for %s: %s", path, exc)
        except Exception as exc:  # OpenCV raises cv2.error, among others
            log.warning("no local features for %s: %s", path, exc)
            # Stored as a photo without details, so it is not decoded again every run.
            try:
                blob = encode_features(empty_features(facts.width, facts.height),
                                       features.codec)
            except Exception:
                blob = None  # the codebook itself is broken: the next run tries again
    return DecodedImage(path, st.st_size, st.st_mtime, content_hash, facts.width,
                        facts.height, facts.format, facts.captured_at, pixels,
                        local_features=blob, feature_count=count)


def _failed(base: DecodedImage, error: str) -> DecodedImage:
    return DecodedImage(base.path, base.size, base.mtime, base.content_hash, error=error)


def _open_query(source: Path | bytes, draft_size: int, draft_long_side: int = 0
                ) -> tuple[Image.Image, ImageFacts]:
    if isinstance(source, bytes):
        return open_image(source, "query", draft_size=draft_size,
                          draft_long_side=draft_long_side)
    try:
        with open(source, "rb") as f:
            return open_image(f, Path(source).name, draft_size=draft_size,
                              file_size=os.fstat(f.fileno()).st_size,
                              draft_long_side=draft_long_side)
    except OSError as exc:
        raise ValueError(f"cannot read {source}: {exc.strerror or exc}") from exc


def load_query_image(source: Path | bytes, spec: PreprocessSpec) -> np.ndarray:
    """Pixels for a query image from a file or raw bytes (drop, paste).

    Raises:
        ValueError: the file cannot be read as an image, with the reason.
    """
    img, _ = _open_query(source, spec.size)
    return model_pixels(img, spec)


def load_query_features(source: Path | bytes) -> LocalFeatures:
    """A query image's local features: many, found at QUERY_MAX_SIDE.

    Raises:
        ValueError: the file cannot be read as an image, with the reason.
    """
    img, facts = _open_query(source, 64, QUERY_MAX_SIDE)
    return extract(img, QUERY_MAX_SIDE, QUERY_COUNT, (facts.width, facts.height))
