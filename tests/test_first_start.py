"""A new user's first start: a window that cannot open says what to install; the GUI entry
point is ready for frozen builds; torch and FAISS can share a process on macOS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagesearch.gui import platform_check

REPO = Path(__file__).resolve().parent.parent

DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
UBUNTU = 'NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n'
FEDORA = 'NAME="Fedora Linux"\nID=fedora\n'
ARCH = 'NAME="Arch Linux"\nID=arch\n'
SUSE = 'NAME="openSUSE Tumbleweed"\nID="opensuse-tumbleweed"\nID_LIKE="opensuse suse"\n'
CULPRITS = ["libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxcb-keysyms.so.1"]


def test_a_missing_platform_plugin_is_explained_not_aborted(tmp_path: Path) -> None:
    env = dict(os.environ, QT_QPA_PLATFORM="no-such-plugin", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "main.py", "--library", str(tmp_path / "lib")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == platform_check.EXIT_NO_WINDOW, done.stderr  # not SIGABRT
    assert "imagesearch: the window cannot open" in done.stderr
    assert "QT_QPA_PLATFORM=no-such-plugin names a plugin Qt does not have" in done.stderr
    assert "offscreen" in done.stderr  # the plugins it does have
    assert not (tmp_path / "lib" / "catalog.sqlite3").exists()  # nothing was started


@pytest.mark.parametrize(("release", "command"), [
    (DEBIAN, "sudo apt install libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1"),
    (UBUNTU, "sudo apt install libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1"),
    (FEDORA, "sudo dnf install xcb-util-cursor xcb-util-wm xcb-util-keysyms"),
    (ARCH, "sudo pacman -S xcb-util-cursor xcb-util-wm xcb-util-keysyms"),
    (SUSE, "sudo zypper install libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1"),
    ("ID=gentoo\n", "install the packages that provide: libxcb-cursor.so.0, "
                    "libxcb-icccm.so.4, libxcb-keysyms.so.1"),
])
def test_the_packages_to_install_are_named_for_the_distribution(release: str,
                                                                command: str) -> None:
    assert platform_check.install_hint(release, CULPRITS) == command


def test_only_the_missing_libraries_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    present = {"libxcb-cursor.so.0"}

    def load(name: str) -> object:
        if name not in present and name in CULPRITS:
            raise OSError(f"{name}: cannot open shared object file")
        return object()

    missing = platform_check.missing_libraries(load=load)
    assert missing == CULPRITS[1:]
    monkeypatch.setattr(platform_check, "missing_libraries", lambda: missing)
    monkeypatch.setattr(platform_check, "read_os_release", lambda: DEBIAN)
    qt_said = ["From 6.5.0, xcb-cursor0 or libxcb-cursor0 is needed to load the Qt xcb "
               "platform plugin.",
               'Could not load the Qt platform plugin "xcb" in "" even though it was found.',
               "This application failed to start because no Qt platform plugin could be "
               "initialized."]
    text = platform_check.explain(qt_said, {"DISPLAY": ":0"})
    assert "sudo apt install libxcb-icccm4 libxcb-keysyms1\n" in text
    assert "libxcb-cursor0" not in text.split("What Qt said")[0]


def test_a_missing_qt_library_at_import_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform_check, "read_os_release", lambda: DEBIAN)
    text = platform_check.explain_import_error(ImportError(
        "libxcb-cursor.so.0: cannot open shared object file: No such file or directory"))
    assert text is not None and "sudo apt install libxcb-cursor0" in text
    assert platform_check.explain_import_error(ImportError("No module named 'x'")) is None


def test_the_gui_entry_point_calls_freeze_support_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    from imagesearch.gui import launch

    class Called(Exception):
        pass

    def freeze_support() -> None:
        raise Called

    monkeypatch.setattr(multiprocessing, "freeze_support", freeze_support)
    with pytest.raises(Called):
        launch.main(["--help"])
    assert "imagesearch.gui.launch:main" in (REPO / "pyproject.toml").read_text()


def test_openmp_runtimes_are_allowed_side_by_side_on_macos(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from imagesearch.core import vector_index
    from imagesearch.core.native_libs import guard_openmp

    environ: dict[str, str] = {}
    guard_openmp("linux", environ)
    assert environ == {}
    guard_openmp("darwin", environ)
    assert environ == {"KMP_DUPLICATE_LIB_OK": "TRUE"}
    environ["KMP_DUPLICATE_LIB_OK"] = "FALSE"
    guard_openmp("darwin", environ)
    assert environ["KMP_DUPLICATE_LIB_OK"] == "FALSE"  # the user's own choice stands
    # FAISS is loaded through the guard.
    monkeypatch.delenv("KMP_DUPLICATE_LIB_OK", raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    vector_index._faiss()
    assert os.environ["KMP_DUPLICATE_LIB_OK"] == "TRUE"
