"""Which int8 graph of the image tower keeps faith with fp32 on this CPU, and how fast.

    python bench/int8_variants.py                        # the default model
    python bench/int8_variants.py --model MobileCLIP2-S0/dfndr2b --batch 16

Exports the image tower to ONNX fp32 as the app does (real weights if installed, else
the benchmarks' random ones), quantises it four ways with ONNX Runtime's dynamic
quantisation and times each beside fp32 on the same photo-like probe images, in rounds
(so a moment of load on the machine falls on every variant alike):

- ``8-bit per tensor``: signed 8-bit weights, one scale a tensor (the app before this);
- ``7-bit per tensor``: ONNX Runtime's ``reduce_range``;
- ``7-bit per channel``: and a scale per output channel (the app's graph, made by the
  app's own ``onnx_export.quantize``);
- ``uint8 weights``: unsigned weights, another way around the saturation.

On x86 CPUs without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights with
an instruction whose pair sums saturate at 16 bits, which full 8-bit weights can reach;
the min cosine to the ONNX fp32 graph shows whether they did here. The CPU's VNNI flags
are printed (x86 Linux; "unknown" elsewhere).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit, weights_store
from imagesearch.config import DEFAULT_MODEL
from imagesearch.core.onnx_encoder import onnx_session, unit_rows
from imagesearch.core.runtime_probe import cpu_id, probe_images

VARIANTS = {
    "8-bit per tensor": {},
    "7-bit per tensor": {"reduce_range": True},
    "7-bit per channel": {"app": True},
    "uint8 weights": {"unsigned": True},
}


def vnni_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), None)
    if flags is None:  # not x86 (aarch64 lists "Features")
        return "unknown"
    found = sorted({f for f in flags if "vnni" in f or f.startswith("amx")})
    return " ".join(found) or "none (no VNNI, no AMX)"


def export_visual(model_id: str, folder: Path) -> tuple[Path, int]:
    """The app's fp32 image graph of ``model_id`` in ``folder``: (path, input size)."""
    import torch

    from imagesearch.core.encoder import _build
    from imagesearch.core.onnx_export import _export, _tower_modules

    store, kind = weights_store(model_id)
    weights = store.installed(model_id)
    assert weights is not None
    torch.set_grad_enabled(False)
    model, spec, _tokenizer = _build(model_id, weights)
    model.eval()
    image_tower, _text_tower = _tower_modules()
    path = folder / "visual.fp32.onnx"
    _export(image_tower(model, spec), (torch.zeros(2, spec.size, spec.size, 3,
                                                   dtype=torch.uint8),), ("pixels",), path)
    print(f"# {model_id}, {kind} weights", flush=True)
    return path, spec.size


def quantised(src: Path, name: str, options: dict[str, bool]) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from imagesearch.core.onnx_export import quantize

    dst = src.with_name(name.replace(" ", "-") + ".onnx")
    if options.get("app"):
        quantize(src, dst)
        return dst
    weight_type = QuantType.QUInt8 if options.get("unsigned") else QuantType.QInt8
    quantize_dynamic(str(src), str(dst), weight_type=weight_type,
                     op_types_to_quantize=["MatMul", "Gemm"],
                     per_channel=options.get("per_channel", False),
                     reduce_range=options.get("reduce_range", False))
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    print(f"# CPU: {cpu_id()}; VNNI: {vnni_flags()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="int8-variants-") as tmp:
        fp32, size = export_visual(args.model, Path(tmp))
        graphs = {"fp32": fp32}
        graphs.update({name: quantised(fp32, name, opts) for name, opts in VARIANTS.items()})
        pixels = probe_images(size)
        sessions = {name: onnx_session(path) for name, path in graphs.items()}

        def embed(name: str) -> np.ndarray:
            session = sessions[name]
            return unit_rows(np.concatenate([
                session.run(None, {"pixels": pixels[i:i + args.batch]})[0]
                for i in range(0, len(pixels), args.batch)]))

        ref = embed("fp32")
        cosine = {name: float(np.min(np.sum(ref * embed(name), axis=1))) for name in graphs}
        batch = pixels[:args.batch]
        best = {name: float("inf") for name in graphs}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                session.run(None, {"pixels": batch})
                start = time.perf_counter()
                session.run(None, {"pixels": batch})
                best[name] = min(best[name], time.perf_counter() - start)
        for name in graphs:
            rate = len(batch) / best[name]
            emit({"graph": name, "images_per_s": round(rate, 1),
                  "x_fp32": round(best["fp32"] / best[name], 2),
                  "min_cosine_to_onnx_fp32": round(cosine[name], 5),
                  "mb": round(graphs[name].stat().st_size / 1e6)})


if __name__ == "__main__":
    main()
