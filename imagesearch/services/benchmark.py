"""A benchmark folder's ground truth, read and checked before anything is indexed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagesearch.errors import ImageSearchError

if TYPE_CHECKING:
    from imagesearch.services.context import AppContext


class BenchmarkError(ImageSearchError):
    """The benchmark folder or its gt.json is not usable; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Truth:
    ok: list[int]
    junk: list[int] = field(default_factory=list)
    boxes: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TextQuery:
    query: str
    ok: list[int]


@dataclass
class Benchmark:
    root: Path
    imlist: list[str]
    qimlist: list[str]
    gnd: list[Truth]
    texts: list[TextQuery]
    failed: int = 0  # db photos that could not be indexed

    @property
    def db_dir(self) -> Path:
        return self.root / "db"

    def query_path(self, name: str) -> Path:
        return self.root / "queries" / name

    def photo_ids(self, ctx: AppContext) -> dict[int, int]:
        """Catalog photo id -> imlist index, for every db photo that was indexed."""
        by_path = {(self.db_dir / rel).resolve(): i for i, rel in enumerate(self.imlist)}
        out: dict[int, int] = {}
        self.failed = 0
        for folder in ctx.library.folders():
            for rec in ctx.catalog.photos(ctx.catalog.ids_under(folder.path).tolist()).values():
                index = by_path.get(rec.path)
                if index is None:
                    continue
                if rec.error is not None:
                    self.failed += 1
                else:
                    out[rec.id] = index
        return out


def _fail(gt: Path, what: str) -> BenchmarkError:
    return BenchmarkError(f"{gt}: {what}")


def _indices(gt: Path, value: Any, where: str, n: int) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(i, int) for i in value):
        raise _fail(gt, f"{where} must be a list of db indices")
    bad = [i for i in value if not 0 <= i < n]
    if bad:
        raise _fail(gt, f"{where} names db index {bad[0]}, but imlist has {n} entries")
    return list(value)


def load_benchmark(root: Path) -> Benchmark:
    """Read and check ``root``/gt.json and that every image it names exists.

    Raises:
        BenchmarkError: with one line naming the problem.
    """
    gt = root / "gt.json"
    if not root.is_dir():
        raise BenchmarkError(f"{root} is not a folder")
    for sub in ("db", "queries"):
        if not (root / sub).is_dir():
            raise BenchmarkError(f"{root} has no {sub}/ folder")
    try:
        data = json.loads(gt.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchmarkError(f"{root} has no gt.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(gt, f"cannot be read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise _fail(gt, f"is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(data, dict):
        raise _fail(gt, "must hold a JSON object")
    for key in ("imlist", "qimlist", "gnd"):
        if key not in data:
            raise _fail(gt, f"has no {key!r}")
    imlist, qimlist, gnd = data["imlist"], data["qimlist"], data["gnd"]
    for key, value in (("imlist", imlist), ("qimlist", qimlist)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _fail(gt, f"{key!r} must be a list of file names")
    if not isinstance(gnd, list) or len(gnd) != len(qimlist):
        raise _fail(gt, f"'gnd' must have one entry per query ({len(qimlist)})")
    n = len(imlist)
    truths = []
    for q, entry in enumerate(gnd):
        if not isinstance(entry, dict) or "ok" not in entry:
            raise _fail(gt, f"gnd[{q}] must be an object with 'ok'")
        ok = _indices(gt, entry["ok"], f"gnd[{q}].ok", n)
        junk = _indices(gt, entry.get("junk", []), f"gnd[{q}].junk", n)
        boxes: dict[int, tuple[float, float, float, float]] = {}
        raw_boxes = entry.get("boxes", {})
        if not isinstance(raw_boxes, dict):
            raise _fail(gt, f"gnd[{q}].boxes must map db indices to [x0, y0, x1, y1]")
        for key, box in raw_boxes.items():
            try:
                index = int(key)
            except ValueError:
                raise _fail(gt, f"gnd[{q}].boxes has a key {key!r} that is no index") from None
            if not (isinstance(box, list) and len(box) == 4
                    and all(isinstance(v, int | float) for v in box)):
                raise _fail(gt, f"gnd[{q}].boxes[{key}] must be [x0, y0, x1, y1]")
            _indices(gt, [index], f"gnd[{q}].boxes", n)
            boxes[index] = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
        truths.append(Truth(ok, junk, boxes))
    texts = []
    for t, entry in enumerate(data.get("text", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("query"), str):
            raise _fail(gt, f"text[{t}] must be an object with a 'query' string")
        texts.append(TextQuery(entry["query"], _indices(gt, entry.get("ok", []),
                                                        f"text[{t}].ok", n)))
    for rel in imlist:
        if not (root / "db" / rel).is_file():
            raise BenchmarkError(f"{root / 'db' / rel} is named in gt.json but missing")
    for name in qimlist:
        if not (root / "queries" / name).is_file():
            raise BenchmarkError(f"{root / 'queries' / name} is named in gt.json but missing")
    return Benchmark(root, imlist, qimlist, truths, texts)
