"""CLIP's byte-pair tokenizer without torch or open_clip.

A cold text query must not import open_clip (2.3 s with torch on a small CPU) only to
split a description into token ids. This is the same algorithm as open_clip's
SimpleTokenizer with its default "lower" cleaning and plain truncation; the exporter
checks both give identical ids on a probe set before a model's text tower is allowed to
run without open_clip (core/onnx_export.py).
"""

from __future__ import annotations

import gzip
import html
import itertools
from functools import lru_cache
from pathlib import Path

import numpy as np

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_MERGES = 49152 - 256 - 2  # open_clip keeps this many merges of the file


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """Printable stand-ins for the 256 byte values (GPT-2's reversible mapping)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _clean(text: str) -> str:
    # ftfy repairs mojibake, control characters and entities; printable ASCII without
    # "&" has none of them, and typed queries almost always are that, so its import
    # (0.1-0.2 s) is left for the texts that need it.
    if not (text.isascii() and text.isprintable() and "&" not in text):
        import ftfy

        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def _tables(vocab_path: Path, specials: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Token ids, and merge ranks keyed by the merge's own line ("a b"): strings rather
    than tuples, since building the tables is a sizeable part of a cold query."""
    # Only the first ~20% of the file's lines are used: read and split no further (about
    # 60 ms less on a cold query's path than reading and splitting the whole file).
    chunks: list[bytes] = []
    newlines = 0
    with gzip.open(vocab_path) as fh:
        while newlines <= _MERGES + 1 and (chunk := fh.read(1 << 16)):
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
    data = b"".join(chunks)
    if newlines > _MERGES + 1:  # stopped early: the last chunk may end inside a character
        data = data[:data.rfind(b"\n") + 1]
    lines = data.decode("utf-8").split("\n", _MERGES + 1)[1:_MERGES + 1]
    base = list(_bytes_to_unicode().values())
    vocab = [*base, *(v + "</w>" for v in base), *(m.replace(" ", "") for m in lines),
             *specials]
    return {token: i for i, token in enumerate(vocab)}, {m: i for i, m in enumerate(lines)}


class ClipTokenizer:
    """Text to fixed-length token ids, as open_clip's SimpleTokenizer(clean='lower')."""

    def __init__(self, vocab_path: Path, context_length: int = 77) -> None:
        import regex

        specials = ["<start_of_text>", "<end_of_text>"]
        self._encoder, self._ranks = _tables(vocab_path, specials)
        self._cache: dict[str, str] = {t: t for t in specials}
        self._pattern = regex.compile(
            "|".join(specials)
            + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)
        self.sot = self._encoder[specials[0]]
        self.eot = self._encoder[specials[1]]
        self.context_length = context_length

    def _bpe(self, token: str) -> str:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word: tuple[str, ...] = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            ranked = [(self._ranks.get(f"{a} {b}", -1), a, b)
                      for a, b in itertools.pairwise(word)]
            known = [r for r in ranked if r[0] >= 0]
            if not known:
                break
            _, first, second = min(known)
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self._cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        byte_map = _bytes_to_unicode()
        ids: list[int] = []
        for token in self._pattern.findall(_clean(text)):
            mapped = "".join(byte_map[b] for b in token.encode("utf-8"))
            ids.extend(self._encoder[piece] for piece in self._bpe(mapped).split(" "))
        return ids

    def __call__(self, texts: list[str]) -> np.ndarray:
        """N x context_length int64 ids: start, tokens, end, zeros; the end kept if cut."""
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot][:self.context_length]
            ids[-1] = self.eot
            out[row, :len(ids)] = ids
        return out
