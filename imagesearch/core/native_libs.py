"""Loading torch and FAISS side by side safely.

On macOS the torch and faiss-cpu wheels each bundle their own OpenMP runtime (libomp).
When both are loaded, the second one to start aborts the process with "OMP: Error #15:
Initializing libomp.dylib, but found libomp.dylib already initialized". Intel's
documented switch, KMP_DUPLICATE_LIB_OK=TRUE, lets both run; it must be set before
either library is imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import Any


def guard_openmp(platform: str | None = None,
                 environ: MutableMapping[str, str] | None = None) -> None:
    """Allow the two OpenMP runtimes on macOS (a value the user set is kept)."""
    if (platform or sys.platform) == "darwin":
        (os.environ if environ is None else environ).setdefault("KMP_DUPLICATE_LIB_OK", "TRUE")


def faiss_module() -> Any:
    """FAISS, imported on first use with the OpenMP guard in place."""
    guard_openmp()
    import faiss

    return faiss
