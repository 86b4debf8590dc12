"""Why the window cannot open, in words a new user can act on.

Qt ends the process with a generic "no Qt platform plugin could be initialized" when
its display plugin does not load; on Linux that is nearly always a few missing X11
libraries (Qt 6.5+ needs libxcb-cursor0, which minimal installs lack). This module names
the packages for the distribution. It imports no Qt: it must work when Qt cannot.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_NO_WINDOW = 1  # the exit code when the window cannot open

# The shared libraries Qt's xcb platform plugin loads, and the package holding each.
_XCB_LIBRARIES: dict[str, dict[str, str]] = {
    "libxcb-cursor.so.0": {"debian": "libxcb-cursor0", "fedora": "xcb-util-cursor",
                           "arch": "xcb-util-cursor", "suse": "libxcb-cursor0"},
    "libxcb-icccm.so.4": {"debian": "libxcb-icccm4", "fedora": "xcb-util-wm",
                          "arch": "xcb-util-wm", "suse": "libxcb-icccm4"},
    "libxcb-keysyms.so.1": {"debian": "libxcb-keysyms1", "fedora": "xcb-util-keysyms",
                            "arch": "xcb-util-keysyms", "suse": "libxcb-keysyms1"},
    "libxcb-image.so.0": {"debian": "libxcb-image0", "fedora": "xcb-util-image",
                          "arch": "xcb-util-image", "suse": "libxcb-image0"},
    "libxcb-render-util.so.0": {"debian": "libxcb-render-util0",
                                "fedora": "xcb-util-renderutil",
                                "arch": "xcb-util-renderutil", "suse": "libxcb-render-util0"},
    "libxcb-util.so.1": {"debian": "libxcb-util1", "fedora": "xcb-util", "arch": "xcb-util",
                         "suse": "libxcb-util1"},
    "libxcb-randr.so.0": {"debian": "libxcb-randr0", "fedora": "libxcb", "arch": "libxcb",
                          "suse": "libxcb-randr0"},
    "libxcb-shape.so.0": {"debian": "libxcb-shape0", "fedora": "libxcb", "arch": "libxcb",
                          "suse": "libxcb-shape0"},
    "libxcb-xkb.so.1": {"debian": "libxcb-xkb1", "fedora": "libxcb", "arch": "libxcb",
                        "suse": "libxcb-xkb1"},
    "libxkbcommon-x11.so.0": {"debian": "libxkbcommon-x11-0", "fedora": "libxkbcommon-x11",
                              "arch": "libxkbcommon-x11", "suse": "libxkbcommon-x11-0"},
}
# What a minimal install is known to lack (the issue's own list), when nothing is found.
KNOWN_CULPRITS = ("libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxcb-keysyms.so.1")
_INSTALL = {"debian": "sudo apt install", "fedora": "sudo dnf install",
            "arch": "sudo pacman -S", "suse": "sudo zypper install"}
_FAMILIES = {"debian": "debian", "ubuntu": "debian", "linuxmint": "debian", "pop": "debian",
             "raspbian": "debian", "fedora": "fedora", "rhel": "fedora", "centos": "fedora",
             "rocky": "fedora", "almalinux": "fedora", "arch": "arch", "manjaro": "arch",
             "endeavouros": "arch", "opensuse": "suse", "suse": "suse", "sles": "suse"}


def distro_family(os_release: str) -> str | None:
    """debian, fedora, arch or suse, from the text of /etc/os-release (ID, then ID_LIKE)."""
    fields = dict(re.findall(r'^([A-Z_]+)="?([^"\n]*)"?$', os_release, re.MULTILINE))
    for name in [fields.get("ID", ""), *fields.get("ID_LIKE", "").split()]:
        key = name.lower().split("-")[0]
        if key in _FAMILIES:
            return _FAMILIES[key]
    return None


def missing_libraries(names: Sequence[str] = tuple(_XCB_LIBRARIES),
                      load: Callable[[str], object] = ctypes.CDLL) -> list[str]:
    """The libraries among ``names`` the dynamic loader cannot find."""
    missing = []
    for name in names:
        try:
            load(name)
        except OSError:
            missing.append(name)
    return missing


def install_hint(os_release: str, missing: Sequence[str]) -> str:
    """The command that installs ``missing`` libraries here, or their names if unsure."""
    wanted = list(missing) or list(KNOWN_CULPRITS)
    family = distro_family(os_release)
    if family is None:
        return "install the packages that provide: " + ", ".join(wanted)
    packages = dict.fromkeys(_XCB_LIBRARIES[lib][family] for lib in wanted
                             if lib in _XCB_LIBRARIES)
    if not packages:
        return "install the packages that provide: " + ", ".join(wanted)
    return f"{_INSTALL[family]} {' '.join(packages)}"


def read_os_release() -> str:
    for path in (Path("/etc/os-release"), Path("/usr/lib/os-release")):
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
    return ""


def explain(qt_messages: Sequence[str], environ: dict[str, str] | None = None) -> str:
    """Why Qt could not start a window, from what it logged, and what to do about it."""
    env = dict(os.environ) if environ is None else environ
    said = "\n".join(qt_messages)
    lines = ["imagesearch: the window cannot open: Qt could not start its display "
             "(platform) plugin."]
    asked = env.get("QT_QPA_PLATFORM", "")
    available = re.search(r"Available platform plugins are: ([^\n.]*)", said)
    if asked and re.search(rf'Could not find the Qt platform plugin "{re.escape(asked)}"',
                           said):
        lines.append(f"QT_QPA_PLATFORM={asked} names a plugin Qt does not have"
                     + (f" (it has: {available.group(1)})" if available else "")
                     + "; unset it or choose one of those.")
    elif os.name == "posix" and "xcb" in said:
        missing = missing_libraries()
        found = f"missing: {', '.join(missing)}" if missing else \
            "Qt 6.5 and newer need libxcb-cursor0, which minimal installs lack"
        lines.append(f"Its X11 (xcb) plugin needs system libraries ({found}). Install them:")
        lines.append("    " + install_hint(read_os_release(), missing))
        if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
            lines.append("No display is set either (DISPLAY): start it from a desktop "
                         "session.")
    if said:
        lines.append("What Qt said:")
        lines.extend("    " + line for line in said.splitlines() if line.strip())
    return "\n".join(lines)


def explain_import_error(exc: ImportError) -> str | None:
    """A library Qt itself links against is missing: say which, or None if not that."""
    match = re.search(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file", str(exc))
    if match is None:
        return None
    lib = match.group(1)
    hint = install_hint(read_os_release(), [lib])
    return (f"imagesearch: the window cannot open: Qt needs the system library {lib}, "
            f"which is not installed.\n    {hint}")
