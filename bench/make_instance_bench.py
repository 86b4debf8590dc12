"""Build an instance-retrieval benchmark: objects pasted small, turned and warped into clutter.

    python bench/make_instance_bench.py --out /tmp/ibench            # ~2,000 photos
    python bench/make_instance_bench.py --out /tmp/ibench-s --distractors 200

The result is a BENCH_DIR for `imagesearch eval` (db/, queries/, gt.json in the layout
ROxford and ILIAS use). Seeded, so the same arguments build the same files.

What goes in:
- objects: photos that scikit-image ships (astronaut, coffee, rocket, a page of text, ...),
  the ten UKBench object photos and some of the animal photos from ../shared/data (when
  present). Each object is one query (its clean photo) and is pasted into several
  cluttered scenes: height 15-60% of the frame (4x scale range), turned (up to 180 degrees
  in a share of them), perspective-warped, sometimes mirrored, partly hidden, blurred or
  heavily JPEG-compressed. The true box is the pasted object's bounding box.
- clutter: collages of the other animal photos (mostly cats and dogs) over textures;
  every distractor scene also has a pasted decoy animal treated exactly like the
  objects, so "something was pasted here" gives nothing away. Since the animal objects
  are cats and dogs among cats and dogs, every scene is a same-category hard negative.
- near-duplicates: the UKBench photos' edited copies in ../shared/data (flipped, resized,
  rotated) as further positives of their object's query.
- text queries ("an astronaut", "a rocket", ...) whose positives are the scenes holding
  that object, for the global stage once real open_clip weights are installed.

Without ../shared/data it still builds, from scikit-image photos and generated textures
alone (the tests use that).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"

# scikit-image photos used as objects, with a text query for each where one makes sense.
SKIMAGE_OBJECTS: dict[str, str | None] = {
    "astronaut": "an astronaut in a space suit",
    "coffee": "a cup of coffee",
    "chelsea": "a tabby cat",
    "rocket": "a rocket on a launch pad",
    "stereo_motorcycle": "a motorcycle",
    "camera": "a man with a camera on a tripod",
    "page": "a page of printed text",
    "hubble_deep_field": "galaxies in deep space",
    "immunohistochemistry": None,
    "retina": "an image of a retina",
    "coins": "old coins",
    "logo": "a logo",
}
TEXTURES = ("brick", "grass", "gravel")
CANVASES = ((1024, 768), (768, 1024), (1024, 576), (960, 960))


@dataclass
class ObjectSpec:
    name: str
    image: Image.Image
    text: str | None = None


def _skimage(name: str) -> Image.Image:
    import skimage.data

    loaded = getattr(skimage.data, name)()
    arr = np.asarray(loaded[0] if isinstance(loaded, tuple) else loaded)  # stereo: the left
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.shape[-1] == 4:  # the logo: alpha over white
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8))


def _texture(name: str, rng: np.random.Generator) -> Image.Image:
    try:
        return _skimage(name)
    except AttributeError:
        return Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))


def _load(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def _quad_for(obj: Image.Image, canvas: tuple[int, int], rng: np.random.Generator,
              hard_rotation: bool) -> np.ndarray:
    """Where the object's corners land: scaled, turned, warped, kept mostly in frame."""
    cw, ch = canvas
    ow, oh = obj.size
    height_frac = math.exp(rng.uniform(math.log(0.15), math.log(0.6)))
    scale = height_frac * ch / oh
    angle = rng.uniform(-180, 180) if hard_rotation else rng.uniform(-20, 20)
    w, h = ow * scale, oh * scale
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    # Perspective: each corner moves up to 12% of the object's size.
    corners += rng.uniform(-0.12, 0.12, corners.shape) * np.array([w, h])
    t = math.radians(angle)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    corners = corners @ rot.T
    span = corners.max(axis=0) - corners.min(axis=0)
    # Centre so that at least ~80% of the object stays inside the frame.
    margin = np.minimum(span * 0.3, np.array([cw, ch]) * 0.45)
    lo = -corners.min(axis=0) - margin
    hi = np.array([cw, ch]) - corners.max(axis=0) + margin
    centre = rng.uniform(np.minimum(lo, hi), np.maximum(lo, hi))
    return corners + centre


def _mask(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A cut-out shape: the whole rectangle, an ellipse or a rounded rectangle, feathered."""
    w, h = size
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    kind = rng.integers(0, 3)
    if kind == 0:
        draw.rectangle((0, 0, w - 1, h - 1), fill=255)
    elif kind == 1:
        draw.ellipse((0, 0, w - 1, h - 1), fill=255)
    else:
        draw.rounded_rectangle((0, 0, w - 1, h - 1), radius=int(min(w, h) * 0.2), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(max(1.0, min(w, h) / 200)))


def _paste(scene: Image.Image, obj: Image.Image, rng: np.random.Generator,
           hard_rotation: bool, mirror: bool) -> list[float]:
    """Warp ``obj`` into ``scene`` in place; returns its box [x0, y0, x1, y1] in scene pixels."""
    import cv2

    if mirror:
        obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    quad = _quad_for(obj, scene.size, rng, hard_rotation)
    ow, oh = obj.size
    src = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(src, quad.astype(np.float32))
    size = scene.size
    warped = cv2.warpPerspective(np.asarray(obj), matrix, size, flags=cv2.INTER_AREA)
    alpha = cv2.warpPerspective(np.asarray(_mask(obj.size, rng)), matrix, size,
                                flags=cv2.INTER_LINEAR)
    scene.paste(Image.fromarray(warped), (0, 0), Image.fromarray(alpha))
    ys, xs = np.nonzero(alpha > 127)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _clutter(canvas: tuple[int, int], pool: list[Image.Image], textures: list[Image.Image],
             rng: np.random.Generator) -> Image.Image:
    cw, ch = canvas
    base = textures[rng.integers(len(textures))] if rng.random() < 0.5 or not pool \
        else pool[rng.integers(len(pool))]
    scene = base.resize(canvas, Image.Resampling.BILINEAR)
    for _ in range(int(rng.integers(4, 11)) if pool else 0):
        photo = pool[rng.integers(len(pool))]
        frac = rng.uniform(0.2, 0.55)
        w = max(8, int(photo.width * frac * ch / photo.height))
        h = max(8, int(frac * ch))
        piece = photo.resize((w, h), Image.Resampling.BILINEAR).convert("RGBA")
        if rng.random() < 0.5:
            piece = piece.rotate(float(rng.uniform(-25, 25)), Image.Resampling.BILINEAR,
                                 expand=True)
        scene.paste(piece, (int(rng.integers(-w // 3, cw - w // 2)),
                            int(rng.integers(-h // 3, ch - h // 2))), piece)
    return scene


def _occlude(scene: Image.Image, box: list[float], pool: list[Image.Image],
             textures: list[Image.Image], rng: np.random.Generator) -> None:
    """Hide 15-35% of the object's box behind a piece of clutter."""
    x0, y0, x1, y1 = box
    share = rng.uniform(0.15, 0.35)
    bw, bh = x1 - x0, y1 - y0
    w = max(4, int(bw * math.sqrt(share) * rng.uniform(0.7, 1.3)))
    h = max(4, int(bw * bh * share / w))
    source = (pool or textures)[rng.integers(len(pool or textures))]
    piece = source.resize((w, h), Image.Resampling.BILINEAR)
    # Along an edge of the box, as a real occluder usually enters from the side.
    side = rng.integers(4)
    x = x0 - w / 2 if side == 0 else x1 - w / 2 if side == 1 else rng.uniform(x0, x1 - w)
    y = y0 - h / 2 if side == 2 else y1 - h / 2 if side == 3 else rng.uniform(y0, y1 - h)
    scene.paste(piece, (int(x), int(y)))


def _degrade(scene: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    if rng.random() < 0.3:
        scene = scene.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 2.5))))
    quality = int(rng.integers(15, 36)) if rng.random() < 0.3 else int(rng.integers(60, 93))
    return scene, quality


def build(out: Path, *, seed: int = 0, per_object: int = 4, distractors: int = 1800,
          animal_objects: int = 20, shared: Path | None = SHARED,
          skimage_objects: tuple[str, ...] | None = None) -> dict[str, int]:
    """Write the benchmark into ``out``; returns counts. ``shared=None`` uses no shared data."""
    rng = np.random.default_rng(seed)
    db, queries = out / "db", out / "queries"
    for d in (db / "scenes", db / "near-duplicates", queries):
        d.mkdir(parents=True, exist_ok=True)
    animals_dir = shared / "animals" if shared is not None else None
    ukbench_dir = shared / "ukbench-near-duplicates" if shared is not None else None
    animal_files = sorted(animals_dir.glob("*.jpg")) if animals_dir and animals_dir.is_dir() \
        else []
    order = rng.permutation(len(animal_files))
    object_animals = [animal_files[i] for i in order[:animal_objects]]
    pool = [_load(animal_files[i]) for i in order[animal_objects:]]
    textures = [_texture(n, rng) for n in TEXTURES]

    objects: list[ObjectSpec] = []
    names = skimage_objects if skimage_objects is not None else tuple(SKIMAGE_OBJECTS)
    objects += [ObjectSpec(n, _skimage(n), SKIMAGE_OBJECTS.get(n)) for n in names]
    if ukbench_dir is not None and (ukbench_dir / "base_images").is_dir():
        objects += [ObjectSpec(p.stem, _load(p))
                    for p in sorted((ukbench_dir / "base_images").glob("*.jpg"))]
    objects += [ObjectSpec(f"animal-{p.stem}", _load(p)) for p in object_animals]
    if not pool:
        # No shared photos: skimage photos not used as objects stand in for clutter.
        pool = [_skimage(n) for n in SKIMAGE_OBJECTS if n not in names]
        pool = pool or textures

    imlist: list[str] = []
    gnd: list[dict[str, object]] = []
    texts: dict[str, list[int]] = {}

    def add_scene(obj: Image.Image | None, scene_name: str) -> tuple[int, list[float]]:
        canvas = CANVASES[rng.integers(len(CANVASES))]
        scene = _clutter(canvas, pool, textures, rng)
        hard = bool(rng.random() < 0.4)
        mirror = bool(rng.random() < 0.25)
        decoy = obj is None
        thing = pool[rng.integers(len(pool))] if decoy else obj
        assert thing is not None
        box = _paste(scene, thing, rng, hard, mirror)
        if rng.random() < 0.3:
            _occlude(scene, box, pool, textures, rng)
        scene, quality = _degrade(scene, rng)
        rel = f"scenes/{scene_name}.jpg"
        scene.save(db / rel, quality=quality)
        imlist.append(rel)
        return len(imlist) - 1, box

    qimlist: list[str] = []
    for obj in objects:
        qname = f"{obj.name}.jpg"
        obj.image.save(queries / qname, quality=95)
        qimlist.append(qname)
        ok: list[int] = []
        boxes: dict[str, list[float]] = {}
        for k in range(per_object):
            index, box = add_scene(obj.image, f"{obj.name}-{k}")
            ok.append(index)
            boxes[str(index)] = [round(v, 1) for v in box]
        if ukbench_dir is not None:
            for copy in sorted((ukbench_dir / "mixed_images").glob(f"{obj.name}*.jpg")):
                try:
                    img = _load(copy)
                except OSError:
                    continue  # the deliberately corrupt copy is no positive
                rel = f"near-duplicates/{copy.name}"
                img.save(db / rel, quality=95)
                imlist.append(rel)
                ok.append(len(imlist) - 1)
        gnd.append({"ok": ok, "junk": [], "boxes": boxes})
        if obj.text:
            texts[obj.text] = list(ok)
    for k in range(distractors):
        add_scene(None, f"clutter-{k:05d}")

    gt = {"imlist": imlist, "qimlist": qimlist, "gnd": gnd,
          "text": [{"query": q, "ok": ok} for q, ok in texts.items()],
          "about": {"builder": "bench/make_instance_bench.py", "seed": seed,
                    "per_object": per_object, "distractors": distractors,
                    "shared_data": shared is not None and bool(animal_files)}}
    (out / "gt.json").write_text(json.dumps(gt, indent=1), encoding="utf-8")
    return {"db": len(imlist), "queries": len(qimlist), "positives": sum(len(g["ok"])  # type: ignore[arg-type]
                                                                        for g in gnd)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-object", type=int, default=4,
                        help="scenes each object is pasted into (default 4)")
    parser.add_argument("--distractors", type=int, default=1800,
                        help="scenes without any object (default 1800: ~2,000 photos in all)")
    parser.add_argument("--animal-objects", type=int, default=20)
    parser.add_argument("--no-shared", action="store_true",
                        help="use only photos that packages ship, not ../shared/data")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"{args.out} is not empty; choose a new folder")
    counts = build(args.out, seed=args.seed, per_object=args.per_object,
                   distractors=args.distractors, animal_objects=args.animal_objects,
                   shared=None if args.no_shared else SHARED)
    print(json.dumps({"out": str(args.out), **counts}))


if __name__ == "__main__":
    main()
