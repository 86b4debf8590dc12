"""Train the codebooks that compress stored RootSIFT descriptors.

    python tools/train_feature_codebooks.py [CODEC ... | projection]
    # writes core/data/rootsift_*.npy

Run once; the files are committed. Stored features depend on the codebooks, so a codebook
that changes must come with a new extractor id (core/local_features.py) and the new
checksums in core/feature_codec.py; tests/test_feature_codec.py holds the two together.
The projection that descriptor matching works in (core/spatial_verification.py) is learned
from the same descriptors; nothing stored depends on it.

Training data: SIFT descriptors of photos that scikit-image ships and that the instance
benchmark does not use as objects (textures, a horse, the moon, cells, ...), each at
several sizes and turns, so nothing the benchmark asks for was seen in training.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagesearch.core.feature_codec import (
    CODEBOOK_DIR,
    CODECS,
    _codebook,
    _residual_quantizer,
    codebook_digest,
    codebook_file,
    quantize,
    reconstruct,
)
from imagesearch.core.local_features import FEATURE_MODES, root_sift
from imagesearch.core.spatial_verification import PROJECTION_AXES, PROJECTION_FILE

TRAINING_PHOTOS = ("brick", "grass", "gravel", "cell", "clock", "colorwheel", "horse", "moon",
                   "text", "microaneurysms", "checkerboard", "lfw_subset")


def training_descriptors() -> np.ndarray:
    import cv2
    import skimage.data

    sift = cv2.SIFT_create(nfeatures=3000)
    found = []
    for name in TRAINING_PHOTOS:
        arr = np.asarray(getattr(skimage.data, name)())
        images = list(arr) if name == "lfw_subset" else [arr]  # 200 small faces
        for img in images:
            img = img.astype(np.float32)
            if img.ndim == 3:
                img = img[..., :3].mean(axis=2)
            img = (255 * (img - img.min()) / max(float(np.ptp(img)), 1e-6)).astype(np.uint8)
            scales = (1.0,) if name == "lfw_subset" else (1.5, 1.0, 0.7, 0.5)
            for scale in scales:
                resized = cv2.resize(img, None, fx=scale * (4 if name == "lfw_subset" else 1),
                                     fy=scale * (4 if name == "lfw_subset" else 1),
                                     interpolation=cv2.INTER_AREA)
                for turn in (0, 1) if name != "lfw_subset" else (0,):
                    _, raw = sift.detectAndCompute(np.rot90(resized, turn).copy(), None)
                    if raw is not None:
                        found.append(raw)
    return root_sift(np.concatenate(found))


def _train(name: str, data: np.ndarray) -> np.ndarray:
    """The codebooks of codec ``name`` learned on ``data``; prints the reconstruction error."""
    import faiss

    codec = CODECS[name]
    if codec.kind == "pq":
        pq = faiss.ProductQuantizer(128, codec.parts, 8)
        pq.cp.seed = 1234
        pq.cp.niter = 40
        pq.train(data)
        centroids = faiss.vector_to_array(pq.centroids).reshape(codec.shape)
    else:
        rq = faiss.ResidualQuantizer(128, codec.parts, 8)
        rq.cp.seed = 1234
        rq.max_beam_size = 8
        rq.train(data)
        centroids = faiss.vector_to_array(rq.codebooks).reshape(codec.shape)
    np.save(codebook_file(name), centroids.astype(np.float32))
    return centroids


def _train_projection(data: np.ndarray) -> None:
    """The matching projection: the principal axes of the descriptors (not centred, so
    that dot products, not distances from the mean, are kept), strongest first."""
    moment = data.astype(np.float64).T @ data.astype(np.float64) / len(data)
    energy, axes = np.linalg.eigh(moment)
    energy, axes = energy[::-1], axes[:, ::-1]
    # Each axis's sign is arbitrary: fix it so that a rerun writes the same file.
    axes = axes * np.where(axes[np.abs(axes).argmax(axis=0), np.arange(128)] < 0, -1.0, 1.0)
    np.save(PROJECTION_FILE, np.ascontiguousarray(axes[:, :PROJECTION_AXES], dtype=np.float32))
    kept = np.cumsum(energy) / energy.sum()
    print(f"projection -> {PROJECTION_FILE}; the first 32 / 48 / 64 of 128 axes keep "
          f"{kept[31]:.1%} / {kept[47]:.1%} / {kept[63]:.1%} of the descriptors' energy")


def main() -> None:
    data = np.ascontiguousarray(training_descriptors())
    print(f"{len(data)} training descriptors")
    CODEBOOK_DIR.mkdir(parents=True, exist_ok=True)
    names = sys.argv[1:] or [*sorted({mode.codec for mode in FEATURE_MODES.values()}),
                             "projection"]
    if "projection" in names:
        names.remove("projection")
        _train_projection(data)
    for name in names:
        _train(name, data)
        _codebook.cache_clear()
        _residual_quantizer.cache_clear()
        back = reconstruct(quantize(data, name), name)
        error = float(np.mean(np.sum((back - data) ** 2, axis=1)))
        print(f"{name}: {CODECS[name].parts} bytes a descriptor, mean squared reconstruction "
              f"error {error:.4f} -> {codebook_file(name)}")
        print(f"  sha256 {codebook_digest(name)} (CODEBOOK_SHA256 in core/feature_codec.py)")
    if not names:
        return  # only the projection was asked for
    # For comparison: 8-byte product codes, what the compact mode stored before rq5.
    import faiss

    pq = faiss.ProductQuantizer(128, 8, 8)
    pq.cp.seed = 1234
    pq.train(data)
    back = np.asarray(pq.decode(pq.compute_codes(data)))  # type: ignore[call-arg, func-returns-value]
    back /= np.maximum(np.linalg.norm(back, axis=1, keepdims=True), 1e-9)
    error = float(np.mean(np.sum((back - data) ** 2, axis=1)))
    print(f"(pq8 for comparison: 8 bytes a descriptor, mean squared error {error:.4f})")


if __name__ == "__main__":
    main()
