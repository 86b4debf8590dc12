"""Let torchvision import without its compiled ops, where they cannot load (a build venv step).

PyPI's Linux torchvision wheels are linked against the CUDA build of PyTorch (they need
libc10_cuda.so). Next to PyTorch's CPU build, torchvision's ops library therefore cannot
load. torchvision is written to go on without it (every op registration checks
``torchvision.extension._has_ops()``) except, in 0.28, the two fake-tensor registrations
in ``_meta_registrations.py`` (nms, qnms), which then stop ``import torchvision`` itself.
imagesearch uses only ``torchvision.transforms`` (through open_clip and timm), which needs
no compiled op.

Where the ops load (the CPU wheels from PyTorch's own index, macOS, Windows) this does
nothing. Otherwise it guards those two registrations as the others are guarded, and
removes the libraries that cannot load (the ops, the image codecs and the CUDA runtime
copies they carry), so the frozen app does not ship them.

    python installers/torchvision_without_ops.py      # with the build venv's python
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

GUARD = '''

def _fake_if_ops(name):
    """register_fake where the compiled ops are loaded (imagesearch's build patch)."""
    def wrapper(fn):
        if torchvision.extension._has_ops():
            return torch.library.register_fake(name)(fn)
        return fn

    return wrapper
'''
ANCHOR = 'return torch.library.Library("torchvision", "IMPL", "Meta")\n'


def guarded(text: str) -> str:
    """torchvision's _meta_registrations.py with every fake registration behind _has_ops().

    Raises:
        ValueError: the text is not the one this patch knows.
    """
    if ANCHOR not in text or "@torch.library.register_fake(" not in text:
        raise ValueError("not torchvision's _meta_registrations.py as this patch knows it")
    text = text.replace(ANCHOR, ANCHOR + GUARD, 1)
    return text.replace("@torch.library.register_fake(", "@_fake_if_ops(")


def imports(code: str) -> bool:
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def main() -> int:
    if imports("import torchvision"):
        print("torchvision imports as it is; nothing to do")
        return 0
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision is not installed", file=sys.stderr)
        return 1
    package = Path(spec.origin).parent
    ops = next(package.glob("_C*.so"), None)
    probe = f"import ctypes, torch; ctypes.CDLL({str(ops)!r})" if ops else ""
    if ops is None or imports(probe):
        print("torchvision fails to import for another reason than its ops library; "
              "not patching", file=sys.stderr)
        return 1
    meta = package / "_meta_registrations.py"
    try:
        text = guarded(meta.read_text(encoding="utf-8"))
    except ValueError:
        print(f"{meta} is not the one this patch knows; not patching", file=sys.stderr)
        return 1
    meta.write_text(text, encoding="utf-8")
    for library in (*package.glob("_C*.so"), *package.glob("image*.so")):
        library.unlink()
    shutil.rmtree(package.parent / "torchvision.libs", ignore_errors=True)
    if not imports("import torchvision.transforms, open_clip"):
        print("torchvision still does not import", file=sys.stderr)
        return 1
    print(f"patched {meta}: torchvision runs without its compiled ops (CPU PyTorch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
