"""Bad input: each awkward file gets a clear reason (or is simply not a photo), and the
rest of the folder is indexed as usual."""

from __future__ import annotations

import builtins
import os
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imagesearch.config import Settings
from imagesearch.core.imaging import PreprocessSpec, decode_for_model
from imagesearch.domain import IndexReport, PhotoRecord, PhotoStatus
from tests.tiny_model import TINY_MODEL_ID

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(os.name != "posix", reason="POSIX file names and links")]

RED, BLUE = (255, 0, 0), (0, 0, 255)
NON_UTF8 = b"caf\xe9.jpg"  # Latin-1 "café": not valid UTF-8
NON_UTF8_BAD = b"broken \xff\xfe.jpg"
EMOJI = "🌅 sunset at the 🏖️.jpg"


def noise(seed: int, w: int = 64, h: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size but holds almost no data (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def two_tone(size: tuple[int, int], top: tuple[int, int, int],
             bottom: tuple[int, int, int]) -> Image.Image:
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2] = top
    arr[h // 2:] = bottom
    return Image.fromarray(arr)


def long_path(root: Path) -> Path:
    """A file whose full path is well over 255 bytes, each component under 255."""
    path = root / ("d" * 120) / ("e" * 120) / ("f" * 150 + ".jpg")
    assert len(os.fsencode(path)) > 255 + len(os.fsencode(root))
    return path


def make_bad_folder(root: Path) -> dict[str, Path]:
    """Every awkward case next to a few good photos; returns name -> path."""
    root.mkdir(parents=True)
    p: dict[str, Path] = {}

    def at(name: str) -> Path:
        p[name] = root / name
        p[name].parent.mkdir(parents=True, exist_ok=True)
        return p[name]

    noise(1).save(at("good1.jpg"))
    noise(2).save(at("good2.png"))
    noise(3).save(at("sub/good3.jpg"))
    at("zero.jpg").write_bytes(b"")
    full = (root / "good1.jpg").read_bytes()
    at("truncated.jpg").write_bytes(full[: len(full) // 2])
    at("random.jpg").write_bytes(np.random.default_rng(4).bytes(4096))
    at("text.png").write_text("this is a text file, not a picture\n")
    at("bomb.png").write_bytes(png_header_only(100_000, 100_000))  # over 2x the limit
    at("bomb_warning.png").write_bytes(png_header_only(10_000, 10_000))  # over the limit
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(at("cmyk.jpg"))  # red in CMYK
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(at("deep16.png"))
    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([0, 255, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (0, 32, 64, 64))  # bottom half palette entry 1 (red)
    pal.save(at("palette_alpha.png"), transparency=0)  # top half (green) transparent
    frames = [Image.new("RGB", (64, 64), c) for c in (RED, BLUE, BLUE)]
    frames[0].save(at("animated.gif"), save_all=True, append_images=frames[1:],
                   duration=100, loop=0)
    # Orientation 6: stored sideways, displayed after turning 90° clockwise.
    upright = two_tone((48, 96), RED, BLUE)
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(at("rotated.jpg"), exif=exif, quality=95)
    upright.save(at("twin_upright.jpg"), quality=95)
    sideways.save(at("twin_sideways.jpg"), quality=95)
    import pillow_heif

    pillow_heif.register_heif_opener()
    noise(5).save(at("photo.heic"))
    os.symlink(root / "does-not-exist.jpg", at("broken_link.jpg"))
    os.symlink("loop.jpg", at("loop.jpg"))
    os.symlink(root, root / "sub" / "back")  # a folder link loop: walked once only
    noise(6).save(at("album.jpg/inside.jpg"))  # a folder whose name ends in .jpg
    p["album.jpg"] = root / "album.jpg"
    raw = os.fsencode(root)
    with open(os.path.join(raw, NON_UTF8), "wb") as f:
        noise(7).save(f, format="JPEG")
    p["non_utf8"] = Path(os.fsdecode(os.path.join(raw, NON_UTF8)))
    with open(os.path.join(raw, NON_UTF8_BAD), "wb") as f:
        f.write(b"\x00garbage")
    p["non_utf8_bad"] = Path(os.fsdecode(os.path.join(raw, NON_UTF8_BAD)))
    noise(8).save(at(EMOJI))
    p["long"] = long_path(root)
    p["long"].parent.mkdir(parents=True)
    noise(9).save(p["long"])
    return p


GOOD = ["good1.jpg", "good2.png", "sub/good3.jpg", "cmyk.jpg", "deep16.png",
        "palette_alpha.png", "animated.gif", "rotated.jpg", "twin_upright.jpg",
        "twin_sideways.jpg", "photo.heic", "album.jpg/inside.jpg", "non_utf8", EMOJI, "long"]

FAILED = {
    "zero.jpg": "empty file (0 bytes)",
    "truncated.jpg": "truncated",
    "random.jpg": "not an image",
    "text.png": "not an image",
    "bomb.png": "too large to decode safely",
    "bomb_warning.png": "too large to decode safely",
    "broken_link.jpg": "broken symbolic link",
    "loop.jpg": "symbolic link loop",
    "non_utf8_bad": "not an image",
}


class Indexed:
    def __init__(self, ctx: Any, paths: dict[str, Path], report: IndexReport) -> None:
        self.ctx = ctx
        self.paths = paths
        self.report = report

    def record(self, name: str) -> PhotoRecord:
        rec = self.ctx.library.photo(self.paths[name])
        assert rec is not None, f"{name} is not in the catalog"
        return rec  # type: ignore[no-any-return]

    def vector(self, name: str) -> np.ndarray:
        v = self.ctx.catalog.vector(self.record(name).id, self.ctx.models.model_id)
        assert v is not None
        return v  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, models_dir: Path,
            shared_encoder: Any) -> Iterator[Indexed]:
    """The whole awkward folder indexed once, through the real decode processes."""
    from imagesearch.services.context import build_context

    base = tmp_path_factory.mktemp("bad")
    paths = make_bad_folder(base / "photos")
    settings = Settings(library_dir=base / "library", models_dir=models_dir,
                        model_id=TINY_MODEL_ID, decode_workers=1, batch_size=8)
    ctx = build_context(settings, encoder=shared_encoder)
    ctx.library.add_folder(base / "photos")
    report = ctx.indexing.run()
    yield Indexed(ctx, paths, report)
    ctx.close()


def test_the_run_completes_with_every_good_photo_indexed(indexed: Indexed) -> None:
    for name in GOOD:
        rec = indexed.record(name)
        assert rec.status is PhotoStatus.INDEXED, f"{name}: {rec.error}"
        assert rec.error is None
    assert indexed.report.failed == len(FAILED)
    assert indexed.report.added == len(GOOD)
    counts = indexed.ctx.catalog.counts()
    assert counts[PhotoStatus.INDEXED] == len(GOOD)
    assert counts[PhotoStatus.FAILED] == len(FAILED)
    ids = sorted(int(i) for i in indexed.ctx.vectors.index().ids())
    assert ids == sorted(indexed.record(n).id for n in GOOD)


@pytest.mark.parametrize("name", sorted(FAILED))
def test_bad_file_is_failed_with_a_readable_reason(indexed: Indexed, name: str) -> None:
    rec = indexed.record(name)
    assert rec.status is PhotoStatus.FAILED
    assert rec.error is not None and FAILED[name] in rec.error
    assert "Traceback" not in rec.error and len(rec.error) < 300
    assert indexed.ctx.catalog.vector(rec.id, indexed.ctx.models.model_id) is None


def test_failures_are_not_redone_on_the_next_run(indexed: Indexed) -> None:
    generation = indexed.ctx.catalog.generation()
    report = indexed.ctx.indexing.run()
    assert report.failed == 0 and report.added == 0 and report.updated == 0
    assert report.unchanged == len(GOOD) + len(FAILED)
    assert indexed.ctx.catalog.generation() == generation  # nothing was rewritten


def test_folder_named_like_a_photo_is_walked_not_indexed(indexed: Indexed) -> None:
    assert indexed.ctx.library.photo(indexed.paths["album.jpg"]) is None
    assert indexed.record("album.jpg/inside.jpg").status is PhotoStatus.INDEXED


def test_folder_link_loop_is_walked_once(indexed: Indexed) -> None:
    from sqlalchemy import text

    with indexed.ctx.catalog.engine.connect() as conn:
        paths = [Path(os.fsdecode(bytes(r[0])))
                 for r in conn.execute(text("SELECT path FROM photos"))]
    assert len(paths) == len(set(paths)) == len(GOOD) + len(FAILED)
    assert not [p for p in paths if "back" in p.parts]


def test_cmyk_is_converted(indexed: Indexed) -> None:
    d = decode_for_model(indexed.paths["cmyk.jpg"], PreprocessSpec(size=32))
    assert d.error is None and d.pixels is not None
    assert np.allclose(d.pixels.reshape(-1, 3).mean(0), RED, atol=20)
    assert (indexed.record("cmyk.jpg").width, indexed.record("cmyk.jpg").height) == (64, 48)


def test_16_bit_png_is_scaled_not_clipped(indexed: Indexed) -> None:
    d = decode_for_model(indexed.paths["deep16.png"], PreprocessSpec(size=64))
    assert d.pixels is not None
    # The ramp spans 0..65520: scaled, it must reach near white, not saturate early.
    assert d.pixels[0, 0, 0] < 10 and d.pixels[-1, -1, 0] > 240
    assert 100 < d.pixels[32, 0, 0] < 160


def test_palette_transparency_goes_onto_white(indexed: Indexed) -> None:
    d = decode_for_model(indexed.paths["palette_alpha.png"], PreprocessSpec(size=64))
    assert d.pixels is not None
    assert tuple(d.pixels[4, 32]) == (255, 255, 255)  # transparent green -> white
    assert tuple(d.pixels[60, 32]) == RED


def test_animated_gif_uses_the_first_frame(indexed: Indexed) -> None:
    d = decode_for_model(indexed.paths["animated.gif"], PreprocessSpec(size=32))
    assert d.pixels is not None
    assert np.allclose(d.pixels.reshape(-1, 3).mean(0), RED, atol=2)


def test_exif_rotated_photo_is_indexed_upright(indexed: Indexed) -> None:
    rec = indexed.record("rotated.jpg")
    assert (rec.width, rec.height) == (48, 96)  # as displayed, not as stored (96x48)
    d = decode_for_model(indexed.paths["rotated.jpg"], PreprocessSpec(size=64))
    assert d.pixels is not None
    assert np.allclose(d.pixels[2, 32], RED, atol=40)  # red on top, blue below
    assert np.allclose(d.pixels[-3, 32], BLUE, atol=40)
    v = indexed.vector("rotated.jpg")
    same = float(v @ indexed.vector("twin_upright.jpg"))
    turned = float(v @ indexed.vector("twin_sideways.jpg"))
    assert same > turned and same > 0.99


def test_heic_is_indexed(indexed: Indexed) -> None:
    rec = indexed.record("photo.heic")
    assert rec.status is PhotoStatus.INDEXED and rec.format == "HEIF"
    assert (rec.width, rec.height) == (64, 64)


def test_odd_file_names_round_trip(indexed: Indexed) -> None:
    for name in ("non_utf8", EMOJI, "long"):
        rec = indexed.record(name)
        assert rec.path == indexed.paths[name]
        assert os.path.exists(os.fsencode(rec.path))
    assert os.fsencode(indexed.record("non_utf8").path).endswith(NON_UTF8)
    assert len(os.fsencode(indexed.record("long").path)) > 255


def test_status_and_retry_commands_list_reasons(indexed: Indexed,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from imagesearch.cli.main import main

    monkeypatch.setenv("IMAGESEARCH_MODELS", str(indexed.ctx.settings.models_dir))
    lib = str(indexed.ctx.settings.library_dir)
    assert main(["--library", lib, "--model", TINY_MODEL_ID, "status", "--json",
                 "--failures", "50"]) == 0
    status = json.loads(capsys.readouterr().out)
    reasons = {Path(f["path"]).name: f["reason"] for f in status["failures"]}
    assert reasons["zero.jpg"] == "empty file (0 bytes)"
    assert "symbolic link loop" in reasons["loop.jpg"]
    assert status["failed"] == len(FAILED)


# Cases that need to reach inside the decoder: decode in this process so monkeypatches apply.

@pytest.fixture
def inline_context(make_settings: Callable[..., Settings], shared_encoder: Any,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from imagesearch.services.context import build_context

    monkeypatch.setattr("imagesearch.core.decode_pool.default_workers",
                        lambda features=False: 0)
    ctx = build_context(make_settings(decode_workers=0), encoder=shared_encoder)
    yield ctx
    ctx.close()


def test_unreadable_file_is_failed_with_permission_reason(
        inline_context: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    noise(10).save(root / "ok.jpg")
    locked = root / "locked.jpg"
    noise(11).save(locked)
    locked.chmod(0)
    if os.geteuid() == 0:
        # root reads through chmod 000; make the decoder's open fail as it would for a user.
        real_open = builtins.open

        def guarded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            if Path(file) == locked:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr("imagesearch.core.imaging.open", guarded_open, raising=False)
    try:
        inline_context.library.add_folder(root)
        report = inline_context.indexing.run()
    finally:
        locked.chmod(0o644)
    assert report.failed == 1 and report.added == 1
    rec = inline_context.library.photo(locked)
    assert rec.status is PhotoStatus.FAILED
    assert rec.error == "permission denied: cannot read the file"
    assert inline_context.library.photo(root / "ok.jpg").status is PhotoStatus.INDEXED
    # Permissions fixed: `retry` picks it up.
    if os.geteuid() == 0:
        monkeypatch.delattr("imagesearch.core.imaging.open")
    report = inline_context.indexing.retry_failed()
    assert inline_context.library.photo(locked).status is PhotoStatus.INDEXED


def test_heic_without_the_plugin_says_what_to_install(
        inline_context: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pillow_heif

    from imagesearch.core import imaging

    root = tmp_path / "photos"
    root.mkdir()
    pillow_heif.register_heif_opener()
    noise(12).save(root / "phone.heic")
    noise(13).save(root / "ok.jpg")
    monkeypatch.setattr(imaging, "_heif_state", False)
    monkeypatch.setattr(imaging, "_ensure_heif", lambda: False)
    inline_context.library.add_folder(root)
    report = inline_context.indexing.run()
    assert report.failed == 1 and report.added == 1
    rec = inline_context.library.photo(root / "phone.heic")
    assert rec.status is PhotoStatus.FAILED
    assert rec.error is not None and "pillow-heif" in rec.error
    assert "pip install pillow-heif" in rec.error


def test_file_deleted_between_scan_and_decode(
        context: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imagesearch.services import indexing

    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        noise(20 + i).save(root / f"p{i}.jpg")
    victim = root / "p1.jpg"
    real_walk = indexing.walk

    def walk_then_delete(folder: Path, cancelled: Callable[[], bool],
                         unreadable: list[Path] | None = None) -> Iterator[Any]:
        yield from real_walk(folder, cancelled, unreadable)
        victim.unlink()  # the scan saw it; the decoder will not find it

    monkeypatch.setattr(indexing, "walk", walk_then_delete)
    context.library.add_folder(root)
    report = context.indexing.run()
    assert report.added == 2 and report.failed == 1
    rec = context.library.photo(victim)
    assert rec is not None and rec.status is PhotoStatus.FAILED
    assert rec.error == "file disappeared before it could be read"
    monkeypatch.undo()
    report = context.indexing.run()  # the next scan forgets it
    assert report.removed == 1 and context.library.photo(victim) is None
    assert context.catalog.counts()[PhotoStatus.INDEXED] == 2


def test_decoder_never_raises_on_odd_inputs(tmp_path: Path) -> None:
    spec = PreprocessSpec(size=32)
    (tmp_path / "dir.jpg").mkdir()
    cases = {
        tmp_path / "missing.jpg": "disappeared",
        tmp_path / "dir.jpg": "is a folder",
    }
    for path, reason in cases.items():
        d = decode_for_model(path, spec)
        assert d.pixels is None and d.error is not None and reason in d.error


@pytest.mark.skipif(sys.platform != "linux", reason="Linux file name rules")
def test_name_too_long_for_the_os_is_reported_not_raised(tmp_path: Path) -> None:
    d = decode_for_model(tmp_path / ("x" * 300 + ".jpg"), PreprocessSpec(size=32))
    assert d.pixels is None and d.error is not None and "cannot read" in d.error
