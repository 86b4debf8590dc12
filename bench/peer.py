"""imagesearch beside rclip on the same photos and the same model weights, as two rows.

    python bench/peer.py --rclip /path/to/venv/bin/rclip          # ../shared/data/photos/animals
    python bench/peer.py --rclip ... --local-features off compact # both imagesearch rows

rclip (3.3.0) runs ONNX Runtime fp32 graphs of ViT-B-32-256; it runs offline when they sit
in its data folder (RCLIP_DATADIR/ViT-B-32-256-datacomp_s34b_b86k/{visual,textual}.onnx and
tokenizer/bpe_simple_vocab_16e6.txt.gz). This script exports those two graphs from the
very checkpoint imagesearch loads (real weights if installed, else the benchmarks' random
ones), so both tools run the same network with the same weights. Install rclip in a
virtual environment of its own (`pip install rclip==3.3.0`), not the project's.

Each row: first full index (wall time, photos/s, peak memory of the process), a rescan
with nothing changed, and cold processes answering a text query and an image query
(median of --repeat runs, peak memory). Peak memory is GNU time's maximum resident set
size of the command's largest process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import weights_store
from imagesearch.config import DEFAULT_MODEL

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "animals"
RCLIP_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"
QUERY = "a dog running on the grass"


def export_for_rclip(checkpoint: Path, datadir: Path) -> None:
    """rclip's two graphs (float NCHW input named "input", output "output"), fp32."""
    import open_clip
    import torch
    from open_clip.tokenizer import default_bpe

    model = open_clip.create_model("ViT-B-32-256", pretrained=str(checkpoint)).eval()
    import warnings

    warnings.filterwarnings("ignore")
    folder = datadir / RCLIP_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)

    class Visual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model.encode_image(x)

    class Textual(Visual):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.model.encode_text(t)

    examples = ((Visual(), torch.zeros(1, 3, 256, 256), "visual.onnx"),
                (Textual(), open_clip.get_tokenizer("ViT-B-32-256")(["a"]), "textual.onnx"))
    with torch.enable_grad():  # no-grad attention takes a path ONNX cannot express
        for module, example, name in examples:
            torch.onnx.export(module, (example,), str(folder / name), input_names=["input"],
                              output_names=["output"], opset_version=17, dynamo=False,
                              dynamic_axes={"input": {0: "n"}, "output": {0: "n"}})
    (datadir / "tokenizer").mkdir(exist_ok=True)
    shutil.copyfile(default_bpe(), datadir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz")


def timed(cmd: list[str], env: dict[str, str], cwd: Path | None = None
          ) -> tuple[float, float, str]:
    """(seconds, peak MB, stdout) of one command, measured by GNU time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        proc = subprocess.run(["/usr/bin/time", "-o", out.name, "-f", "%e %M", *cmd],
                              env=env, cwd=cwd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                               f"{proc.stderr[-2000:]}")
        seconds, kb = out.read().split()[-2:]
    return float(seconds), int(kb) / 1024, proc.stdout


def median_of(cmd: list[str], env: dict[str, str], repeat: int, cwd: Path | None = None
              ) -> dict[str, float]:
    runs = [timed(cmd, env, cwd) for _ in range(repeat)]
    return {"s": round(statistics.median(r[0] for r in runs), 2),
            "s_range": [round(min(r[0] for r in runs), 2), round(max(r[0] for r in runs), 2)],
            "peak_mb": round(max(r[1] for r in runs))}


def rclip_row(rclip: str, photos: Path, datadir: Path, image: Path, repeat: int
              ) -> dict[str, object]:
    env = {**os.environ, "RCLIP_DATADIR": str(datadir), "HF_HUB_OFFLINE": "1"}
    n = sum(1 for _ in photos.rglob("*.jp*g"))
    s, mb, _ = timed([rclip, "-f", "-t", "10", QUERY], env, cwd=photos)
    rescan = median_of([rclip, "-f", "-t", "10", QUERY], env, repeat, cwd=photos)
    text = median_of([rclip, "-n", "-f", "-t", "10", QUERY], env, repeat, cwd=photos)
    img = median_of([rclip, "-n", "-f", "-t", "10", str(image)], env, repeat, cwd=photos)
    return {"tool": "rclip 3.3.0 (ONNX Runtime fp32)", "photos": n,
            "index_s": s, "photos_per_s": round(n / s, 1), "index_peak_mb": round(mb),
            "rescan_plus_query": rescan, "text_query": text, "image_query": img}


def imagesearch_row(models: Path, photos: Path, library: Path, image: Path, repeat: int,
                    local_features: str) -> dict[str, object]:
    exe = str(Path(sys.executable).with_name("imagesearch"))
    env = {**os.environ, "IMAGESEARCH_MODELS": str(models), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's install caches bytecode
    library.mkdir(parents=True, exist_ok=True)
    (library / "settings.json").write_text(json.dumps({"local_features": local_features}))
    base = [exe, "--library", str(library)]
    s, mb, out = timed([*base, "index", str(photos), "--no-progress"], env)
    n = int(out.split(" added")[0].split()[-1])
    rescan = median_of([*base, "index", "--no-progress"], env, repeat)
    text = median_of([*base, "search", "-k", "10", QUERY], env, repeat)
    row: dict[str, object] = {
        "tool": f"imagesearch (local features {local_features})", "photos": n,
        "index_s": s, "photos_per_s": round(n / s, 1), "index_peak_mb": round(mb),
        "rescan": rescan, "text_query": text,
        "image_query": median_of([*base, "search", "-k", "10", "--image", str(image)],
                                 env, repeat)}
    if local_features != "off":
        row["image_query_no_rerank"] = median_of(
            [*base, "search", "-k", "10", "--no-rerank", "--image", str(image)], env, repeat)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=SHARED)
    ap.add_argument("--rclip", help="rclip executable (its own virtual environment)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--local-features", nargs="+", default=["compact"],
                    choices=["off", "compact"],
                    help="one imagesearch row each, in one run (e.g. off compact)")
    ap.add_argument("--skip-imagesearch", action="store_true")
    args = ap.parse_args()
    store, kind = weights_store(DEFAULT_MODEL)
    weights = store.installed(DEFAULT_MODEL)
    assert weights is not None
    photo = sorted(args.photos.rglob("*.jp*g"))[7]
    print(f"# {DEFAULT_MODEL}, {kind} weights; CPU: {_cpu()}; load before: {_load()}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="imagesearch-peer-") as tmp:
        # The query image is a copy outside the library: imagesearch reuses the stored
        # vector of a photo it has indexed, and the point is to time the image tower.
        image = Path(tmp) / f"query{photo.suffix}"
        shutil.copyfile(photo, image)
        if args.rclip:
            datadir = Path(tmp) / "rclip"
            export_for_rclip(weights.path, datadir)
            print(json.dumps(rclip_row(args.rclip, args.photos, datadir, image,
                                       args.repeat)), flush=True)
        for mode in [] if args.skip_imagesearch else args.local_features:
            print(json.dumps(imagesearch_row(store.root, args.photos, Path(tmp) / f"lib-{mode}",
                                             image, args.repeat, mode)), flush=True)
    print(f"# load after: {_load()}", file=sys.stderr)


def _cpu() -> str:
    from imagesearch.core.runtime_probe import cpu_id

    return cpu_id()


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


if __name__ == "__main__":
    main()
