"""The AMES matcher: a small transformer that reads a query's and a photo's descriptors
together and gives the pair one logit (how likely they show the same object).

Input: both sets through one shared embedding (binary model: +-1 codes -> Linear(128,128);
full-precision model: L2-normalised descriptors -> Linear(D,128)), then LayerNorm. The
sequence is [matching token, query tokens, photo tokens]. Each of 5 post-norm layers runs
self-attention within each image, cross-attention across the two, then a ReLU FFN (1024);
the matching token attends to everything in both and everything attends to it. 2 heads,
padding masked by key. Linear(128 -> 1) on the matching token gives the logit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MODEL_DIM = 128
HEADS = 2
LAYERS = 5
FFN = 1024


def build_matcher(state: dict[str, Any], binarized: bool) -> Any:
    """Our matcher with a checkpoint's tensors (already under our names, keymap)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(MODEL_DIM, 3 * MODEL_DIM)
            self.out = nn.Linear(MODEL_DIM, MODEL_DIM)

        def forward(self, x: Any, mask: Any) -> Any:
            b, n, _ = x.shape
            q, k, v = self.qkv(x).view(b, n, 3, HEADS, MODEL_DIM // HEADS) \
                .permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return self.out(y.transpose(1, 2).reshape(b, n, MODEL_DIM))

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self_attn = Attention()
            self.cross_attn = Attention()
            self.ffn_in = nn.Linear(MODEL_DIM, FFN)
            self.ffn_out = nn.Linear(FFN, MODEL_DIM)
            self.norm1 = nn.LayerNorm(MODEL_DIM)
            self.norm2 = nn.LayerNorm(MODEL_DIM)
            self.norm3 = nn.LayerNorm(MODEL_DIM)

        def forward(self, x: Any, within: Any, across: Any) -> Any:
            x = self.norm1(x + self.self_attn(x, within))
            x = self.norm2(x + self.cross_attn(x, across))
            return self.norm3(x + self.ffn_out(F.relu(self.ffn_in(x))))

    class Matcher(nn.Module):
        def __init__(self, local_dim: int) -> None:
            super().__init__()
            self.binarized = binarized
            self.token = nn.Parameter(torch.zeros(MODEL_DIM))
            if binarized:
                self.projection = nn.Parameter(torch.zeros(local_dim, MODEL_DIM))
            self.embed = nn.Linear(MODEL_DIM if binarized else local_dim, MODEL_DIM)
            self.embed_norm = nn.LayerNorm(MODEL_DIM)
            self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
            self.head = nn.Linear(MODEL_DIM, 1)

        def tokens(self, x: Any) -> Any:
            """Descriptors (full-precision model) or +-1 codes (binary) to tokens."""
            if not self.binarized:
                x = F.normalize(x, p=2, dim=-1)
            return self.embed_norm(self.embed(x))

        def forward(self, query: Any, query_pad: Any, photo: Any, photo_pad: Any) -> Any:
            """Logits for B pairs: tokens (B, Q, 128) and (B, T, 128), padding (B, Q) and
            (B, T) bool, True where there is no descriptor."""
            b, nq, _ = query.shape
            nt = photo.shape[1]
            x = torch.cat([self.token.to(query.dtype).expand(b, 1, MODEL_DIM), query, photo],
                          dim=1)
            within, across = _masks(nq, nt, query_pad, photo_pad, x.dtype)
            for layer in self.layers:
                x = layer(x, within, across)
            return self.head(x[:, 0]).squeeze(-1)

    def _masks(nq: int, nt: int, query_pad: Any, photo_pad: Any, dtype: Any
               ) -> tuple[Any, Any]:
        """Additive masks (B, 1, L, L): self-attention stays within an image, cross-
        attention goes to the other image; the matching token sees and is seen by all."""
        length = 1 + nq + nt
        image = torch.zeros(length, dtype=torch.long, device=query_pad.device)
        image[1:1 + nq] = 1
        image[1 + nq:] = 2
        same = image[:, None] == image[None, :]
        free = (image[:, None] == 0) | (image[None, :] == 0)
        within_ok = same | free
        across_ok = ~same | free
        pad = torch.cat([torch.zeros_like(query_pad[:, :1]), query_pad, photo_pad], dim=1)
        keys_ok = ~pad[:, None, None, :]
        neg = torch.finfo(dtype).min

        def additive(ok: Any) -> Any:
            allowed = ok[None, None] & keys_ok
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device) \
                .masked_fill(~allowed, neg)

        return additive(within_ok), additive(across_ok)

    local_dim = int(state["projection"].shape[0]) if binarized \
        else int(state["embed.weight"].shape[1])
    matcher = Matcher(local_dim)
    matcher.load_state_dict(state, strict=True)
    return matcher.eval()


def query_signs(descriptors: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """The binary model's query input: the +-1 signs of the projected descriptors."""
    from imagesearch.core.ames.binarize import binarize, signs

    return signs(binarize(descriptors, projection))
