"""Exporting an open_clip model's two towers to ONNX, in fp32 and int8.

Each tower is its own file, so a text query loads only the text tower and indexing only
the image tower. The image graph takes the decoder's uint8 NxHxWx3 pixels and does the
model's mean/std normalisation itself, so the runtime needs neither torch nor a float
copy of the batch in Python. int8 is ONNX Runtime's dynamic quantisation of the MatMul
and Gemm weights (signed, one scale per output channel, 7 of the 8 bits: see
``quantize``); activations are quantised on the fly, so no calibration photos are
needed. Whether int8 is faithful enough is for the probe (core/runtime_probe.py) to
measure, never assumed here.

Needs torch, open_clip and onnx (export only; running needs onnxruntime alone).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagesearch.core.clip_tokenizer import VOCAB_FILE, ClipTokenizer
from imagesearch.core.imaging import PreprocessSpec

RUNTIME_FORMAT = 3  # bump when the exported graphs change meaning (3: 7-bit int8 weights)
MANIFEST = "runtime.json"
TOKEN_TABLE = "token_embedding.npy"
_OPSET = 17

# Descriptions the exported text tower must tokenise exactly as open_clip does.
TOKENIZER_PROBE = (
    "a photo of a cat", "Red TRAM in the snow!", "grandma's kitchen -dog", "naïve café",
    "東京の夜景 🚋", "it's 12:30 &amp; raining", "  spaced   out  ", "x" * 300,
    "a dog " * 60,
)


@dataclass(frozen=True, slots=True)
class RuntimeManifest:
    """What the runtime needs to know about an exported model, without torch."""

    model_id: str
    weights_sha256: str
    dim: int
    spec: PreprocessSpec
    context_length: int
    text: bool  # the text tower was exported (its tokenizer matches ours)
    format: int = RUNTIME_FORMAT

    def save(self, folder: Path) -> None:
        data = asdict(self)
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.replace(folder / MANIFEST)

    @classmethod
    def load(cls, folder: Path) -> RuntimeManifest | None:
        """The manifest in ``folder``; None if missing, damaged or of another format."""
        try:
            data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            if data.get("format") != RUNTIME_FORMAT:
                return None
            spec = data["spec"]
            data["spec"] = PreprocessSpec(
                size=int(spec["size"]), mean=tuple(spec["mean"]), std=tuple(spec["std"]),
                interpolation=str(spec["interpolation"]),
                resize_mode=str(spec["resize_mode"]), fill_color=int(spec["fill_color"]))
            return cls(**data)
        except (OSError, ValueError, KeyError, TypeError):
            return None


def tower_file(folder: Path, tower: str, variant: str) -> Path:
    """``visual`` or ``textual``, ``fp32`` or ``int8``."""
    return folder / f"{tower}.{variant}.onnx"


def export_model(model: Any, tokenizer: Any, spec: PreprocessSpec, dim: int,
                 model_id: str, weights_sha256: str, folder: Path) -> RuntimeManifest:
    """Write both towers (fp32 and int8) and the manifest into ``folder``.

    Args:
        model: the open_clip model, fp32, on the CPU, in eval mode.
        tokenizer: open_clip's tokenizer for it; the text tower is exported only if
            ours gives identical ids (otherwise text queries stay on torch).
    """
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    image_tower, text_tower = _tower_modules()
    visual = image_tower(model, spec)
    dummy = torch.zeros(2, spec.size, spec.size, 3, dtype=torch.uint8)
    _export(visual, (dummy,), ("pixels",), tower_file(folder, "visual", "fp32"))
    quantize(tower_file(folder, "visual", "fp32"), tower_file(folder, "visual", "int8"))

    ours = _our_tokenizer(tokenizer, folder) if _plain_token_table(model) else None
    if ours is not None:
        table = _token_table_owner(model).token_embedding.weight.detach().float().numpy()
        np.save(folder / TOKEN_TABLE, table)
        tokens = torch.from_numpy(ours(["a photo"]))
        rows = torch.from_numpy(table[tokens.numpy()])
        path = tower_file(folder, "textual", "fp32")
        _export(text_tower(model), (tokens, rows), ("tokens", "rows"), path)
        quantize(path, tower_file(folder, "textual", "int8"))
    manifest = RuntimeManifest(model_id=model_id, weights_sha256=weights_sha256, dim=dim,
                               spec=spec, context_length=ours.context_length if ours else 0,
                               text=ours is not None)
    manifest.save(folder)
    return manifest


def quantize(src: Path, dst: Path) -> None:
    """Dynamic int8 for MatMul and Gemm: signed weights in 7 bits, a scale per channel.

    Why 7 bits: on an x86 CPU without VNNI (AVX2 without AVX-VNNI, AVX-512 before Cascade
    Lake) ONNX Runtime multiplies uint8 activations by int8 weights with an instruction whose 16-bit
    pair sums saturate; with full 8-bit weights the image tower's embeddings then drifted
    to a cosine of 0.988-0.991 to fp32 on an AVX2-only AMD EPYC, below the probe's 0.99,
    so int8 was refused there and indexing fell back to torch fp32. With 7-bit weights
    (ONNX Runtime's ``reduce_range``, its advice for such CPUs) the sums cannot saturate:
    0.9996, at the same speed. A scale per output channel wins back the bit (0.99974).
    One graph for every CPU, since a model folder may move between machines; the probe
    measures it on each (`python bench/int8_variants.py` compares the variants).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_suffix(".partial")
    quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                     reduce_range=True)
    tmp.replace(dst)


def _export(module: Any, example: tuple[Any, ...], inputs: tuple[str, ...], path: Path
            ) -> None:
    import torch

    tmp = path.with_suffix(".partial")
    # Gradients stay on while tracing: in no-grad eval mode torch's attention takes a
    # fused fast path (_native_multi_head_attention) that has no ONNX form.
    axes = {name: {0: "n"} for name in (*inputs, "embedding")}
    with torch.enable_grad():
        torch.onnx.export(module, example, str(tmp), input_names=list(inputs),
                          output_names=["embedding"], opset_version=_OPSET, dynamo=False,
                          dynamic_axes=axes)
    tmp.replace(path)


def _token_table_owner(model: Any) -> Any:
    """The module holding the token table: the model (CLIP) or its text tower
    (CustomTextCLIP, as MobileCLIP2's)."""
    return model if hasattr(model, "token_embedding") else getattr(model, "text", None)


def _plain_token_table(model: Any) -> bool:
    """The model looks its tokens up in one plain table."""
    import torch

    owner = _token_table_owner(model)
    return isinstance(getattr(owner, "token_embedding", None), torch.nn.Embedding)


def _our_tokenizer(reference: Any, folder: Path) -> ClipTokenizer | None:
    """Our tokenizer with open_clip's vocabulary copied beside the graphs, if it agrees."""
    vocab = getattr(reference, "bpe_path", None) or _open_clip_vocab()
    context = int(getattr(reference, "context_length", 0) or 0)
    if vocab is None or not context or type(reference).__name__ != "SimpleTokenizer":
        return None
    try:
        ours = ClipTokenizer(Path(vocab), context)
        same = (ours(list(TOKENIZER_PROBE)) ==
                reference(list(TOKENIZER_PROBE)).numpy()).all()
    except Exception:
        return None
    if not same:
        return None
    shutil.copyfile(vocab, folder / VOCAB_FILE)
    return ours


def _open_clip_vocab() -> str | None:
    try:
        from open_clip.tokenizer import default_bpe

        return str(default_bpe())
    except ImportError:
        return None


def _tower_modules() -> tuple[Any, Any]:
    """The two wrapper modules, defined here so importing this file does not import torch."""
    import torch

    class ImageTower(torch.nn.Module):
        """uint8 NxHxWx3 pixels to the image embedding, normalising inside the graph."""

        def __init__(self, model: Any, spec: PreprocessSpec) -> None:
            super().__init__()
            self.model = model
            std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
            mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
            self.register_buffer("scale", 1.0 / (255.0 * std))
            self.register_buffer("shift", -mean / std)

        def forward(self, pixels: Any) -> Any:
            x = pixels.permute(0, 3, 1, 2).float() * self.scale + self.shift
            return self.model.encode_image(x)

    class Given(torch.nn.Module):
        """Stands in for the token embedding: returns the looked-up rows it is handed."""

        def __init__(self, rows: Any) -> None:
            super().__init__()
            self.rows = rows

        def forward(self, _tokens: Any) -> Any:
            return self.rows

    class TextTower(torch.nn.Module):
        """Token ids plus their embedding rows (looked up outside) to the text embedding.

        The token table is a third of the text tower (49408 x 512 floats for ViT-B-32)
        but a query reads only 77 of its rows; kept out of the graph, in a memory-mapped
        file, it costs nothing to load, and the graph a cold query loads shrinks to the
        transformer alone. open_clip's own encode_text still runs, so its pooling and
        projection are exported as they are.
        """

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: Any, rows: Any) -> Any:
            owner = _token_table_owner(self.model)
            table = owner.token_embedding
            owner.token_embedding = Given(rows)
            try:
                return self.model.encode_text(tokens)
            finally:
                owner.token_embedding = table

    return ImageTower, TextTower
