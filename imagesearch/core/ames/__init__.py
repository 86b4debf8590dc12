"""AMES re-ranking (Suma et al., ECCV 2024): DINOv2 local descriptors, a learned detector,
binary codes for the library, and a small transformer that scores a query-photo pair.

Modules: keymap (official checkpoints to our modules), backbone (DINOv2 patch tokens),
detector (which tokens to keep), binarize (128-bit codes), codec (the stored record),
matcher (the pair transformer), models (loading all of it once), boxes (where the match
is), reranker (the "ames" re-ranker). Torch and timm are imported only inside functions
or by modules that are themselves imported lazily.
"""
