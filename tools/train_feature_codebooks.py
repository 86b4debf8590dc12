"""Train the product-quantisation codebooks that compress stored RootSIFT descriptors.

    python tools/train_feature_codebooks.py        # writes imagesearch/core/data/rootsift_pq*.npy

Run once; the files are committed. Stored features depend on them, so a codebook that
changes must come with a new extractor id (core/local_features.py) and the new checksums
in core/feature_codec.py; tests/test_feature_codec.py holds the two together.

Training data: SIFT descriptors of photos that scikit-image ships and that the instance
benchmark does not use as objects (textures, a horse, the moon, cells, ...), each at
several sizes and turns, so nothing the benchmark asks for was seen in training.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imagesearch.core.feature_codec import CODEBOOK_DIR, codebook_file
from imagesearch.core.local_features import FEATURE_MODES, root_sift

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


def main() -> None:
    import faiss

    data = training_descriptors()
    print(f"{len(data)} training descriptors")
    CODEBOOK_DIR.mkdir(parents=True, exist_ok=True)
    for m in sorted({mode.pq_subquantizers for mode in FEATURE_MODES.values()}):
        pq = faiss.ProductQuantizer(128, m, 8)
        pq.cp.seed = 1234
        pq.cp.niter = 40
        pq.train(np.ascontiguousarray(data))
        centroids = faiss.vector_to_array(pq.centroids).reshape(m, 256, 128 // m)
        codes = pq.compute_codes(data)
        error = float(np.mean(np.sum((pq.decode(codes) - data) ** 2, axis=1)))
        np.save(codebook_file(m), centroids.astype(np.float32))
        print(f"pq{m}: mean squared reconstruction error {error:.4f} -> {codebook_file(m)}")


if __name__ == "__main__":
    main()
