"""Regenerate tests/data/ames_parity.npz by running the official code (never part of
this project) on seeded random weights and the parity test's inputs.

    git -C DINOV2_CLONE archive HEAD dinov2 | tar -x -C /tmp/official/dv2
    git -C AMES_CLONE archive HEAD src extract | tar -x -C /tmp/official/ames
    python tools/make_ames_parity.py
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = ["/tmp/official/dv2", "/tmp/official/ames/src", "/tmp/official/ames/extract",
                str(ROOT)]
os.environ["XFORMERS_DISABLED"] = "1"
import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.ames_random import ames_arrays, detector_arrays, dinov2_arrays, tensors  # noqa: E402
from tests.test_ames_parity import FIXTURE, SEEDS, parity_inputs  # noqa: E402

torch.manual_seed(0)
from dinov2.models import vision_transformer as vits  # noqa: E402

vit = vits.vit_base(patch_size=14, img_size=518, init_values=1.0, block_chunks=0,
                    num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0)
official_sd = vit.state_dict()
ours = dinov2_arrays(SEEDS["dinov2"])
assert set(official_sd) == set(ours), set(official_sd) ^ set(ours)
for k, v in official_sd.items():
    assert tuple(v.shape) == ours[k].shape, k
vit.load_state_dict(tensors(ours), strict=True)
vit.eval()

inp = parity_inputs()
rgb = inp["image"]  # H x W x 3 uint8, RGB
# The official extraction: BGR from OpenCV, /255, BGR mean/std, then channels flipped to RGB.
bgr = rgb[..., ::-1].astype(np.float32).transpose(2, 0, 1) / 255.0
mean, sd = [0.406, 0.456, 0.485], [0.225, 0.224, 0.229]
for i in range(3):
    bgr[i] = (bgr[i] - mean[i]) / sd[i]
im = torch.from_numpy(np.ascontiguousarray(bgr))[None][:, [2, 1, 0]]
with torch.no_grad():
    feats = vit.forward_features(im)["x_norm_patchtokens"]

import extract_dino  # noqa: E402
from spatial_attention_2d import SpatialAttention2d  # noqa: E402

det = SpatialAttention2d(768)
det.load_state_dict(tensors(detector_arrays(SEEDS["detector"])), strict=True)
det.eval()
# get_local moves two small tensors to CUDA; this machine has none: keep them on the CPU.
torch.Tensor.cuda = lambda self, *a, **k: self
with torch.no_grad():
    div = extract_dino.find_divisors(feats.shape[1])
    fmap = feats.permute(0, -1, -2).reshape(feats.shape[0], feats.shape[-1], div[-1], -1)
    dfeats, dweights = det(fmap)
    top_feats, top_w, _, locations, _ = extract_dino.get_local([dfeats], [dweights], [im], 14,
                                                               topk=inp["top"])

from models.matcher import AMES  # noqa: E402

os.makedirs("/tmp/official/networks", exist_ok=True)
np.savez("/tmp/official/networks/itq_dinov2_D128.npz",
         proj=np.zeros((768, 128), np.float32))
logits = {}
for name, binarized in (("dist", True), ("fp", False)):
    model = AMES(data_root="/tmp/official", local_dim=768, model_dim=128, nhead=2,
                 num_encoder_layers=5, dim_feedforward=1024, activation="relu",
                 normalize_before=False, binarized=binarized)
    model.load_state_dict(tensors(ames_arrays(SEEDS["ames_" + name], binarized)), strict=True)
    model.eval()
    args = [torch.from_numpy(inp[k]) for k in ("src", "src_mask", "tgt", "tgt_mask")]
    b = args[2].shape[0]
    args[0], args[1] = args[0].expand(b, -1, -1), args[1].expand(b, -1)
    with torch.no_grad():
        logits[name] = model(*args).numpy()
        if not binarized:
            # The reference rounds the photo's projected tokens to float16 at evaluation
            # (only for this model); recorded as is, and with that step switched off.
            model.binarized = True
            logits["fp_without_rounding"] = model(*args).numpy()

np.savez_compressed(
    FIXTURE,
    patch_tokens=feats[0].numpy(), detector_descriptors=top_feats[0].numpy(),
    detector_weights=top_w[0].numpy(), official_locations=locations[0].numpy(),
    logits_dist=logits["dist"], logits_fp_reference=logits["fp"],
    logits_fp=logits["fp_without_rounding"])
print({k: v for k, v in logits.items()})
print(feats.shape, top_feats.shape, locations[0][:3])
