"""The installer sources agree with the package: what they collect, name and validate.

The frozen build itself (minutes, gigabytes) runs in installers/linux/ and release.yml,
not here; these checks catch, cheaply, what would make it miss a file or a name.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from imagesearch.gui.app_icon import DESKTOP_ID

ROOT = Path(__file__).resolve().parent.parent
INSTALLERS = ROOT / "installers"
PACKAGE = ROOT / "imagesearch"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SPEC = ast.parse((INSTALLERS / "imagesearch.spec").read_text(encoding="utf-8"))
ISS = (INSTALLERS / "windows" / "imagesearch.iss").read_text(encoding="utf-8")
COMMANDS = set(PYPROJECT["project"]["scripts"]) | set(PYPROJECT["project"]["gui-scripts"])


def spec_calls(name: str) -> list[ast.Call]:
    return [n for n in ast.walk(SPEC) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Name) and n.func.id == name]


def keyword(call: ast.Call, name: str) -> Any:
    return next(ast.literal_eval(k.value) for k in call.keywords if k.arg == name)


def test_the_frozen_app_collects_every_data_file_the_wheel_installs() -> None:
    """package-data and the spec's includes must grow together (py.typed is for mypy only)."""
    includes = [p for call in spec_calls("collect_data_files")
                if call.args and ast.literal_eval(call.args[0]) == "imagesearch"
                for p in keyword(call, "includes")]
    collected = {f for pattern in includes for f in PACKAGE.glob(pattern)}
    installed = {f for pattern in PYPROJECT["tool"]["setuptools"]["package-data"]["imagesearch"]
                 for f in PACKAGE.glob(pattern) if f.name != "py.typed"}
    assert any(f.parent.name == "versions" for f in installed)  # migrations are in there
    assert sorted(installed - collected) == []


def test_the_spec_builds_both_commands_from_their_entry_points() -> None:
    executables = {ast.literal_eval(call.args[1]): keyword(call, "console")
                   for call in spec_calls("executable")}
    assert set(executables) == COMMANDS
    assert executables == {"imagesearch": True, "imagesearch-gui": False}
    scripts = [ast.literal_eval(call.args[0]) for call in spec_calls("analysis")]
    entry = {"installers/launch_cli.py": PYPROJECT["project"]["scripts"]["imagesearch"],
             "main.py": PYPROJECT["project"]["gui-scripts"]["imagesearch-gui"]}
    assert sorted(scripts) == sorted(entry)
    for script, target in entry.items():
        module, function = target.split(":")
        assert f"from {module} import {function}" in (ROOT / script).read_text(encoding="utf-8")
    # Both write into one folder named as the installers expect it.
    (collect,) = spec_calls("COLLECT")
    assert keyword(collect, "name") == "imagesearch"
    assert r'Source: "{#Root}\build\dist\imagesearch\*"' in ISS


def test_the_windows_installer_matches_the_package() -> None:
    version = re.search(r'#define AppVersion "([^"]+)"', ISS)
    assert version and version.group(1) == PYPROJECT["project"]["version"]
    for match in re.finditer(r"\{#Root\}\\(resources\\[^\s\"]+)", ISS):
        assert (ROOT / match.group(1).replace("\\", "/")).is_file(), match.group(1)
    launched = set(re.findall(r"\{app\}\\([\w-]+)\.exe", ISS))
    assert launched == {"imagesearch-gui"}


def test_the_release_workflow_builds_on_three_runners_with_scripts_that_exist() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())
    jobs = workflow["jobs"]
    runners = {name: job["runs-on"].split("-")[0] for name, job in jobs.items()}
    assert {runners["linux"], runners["windows"], runners["macos"]} == {
        "ubuntu", "windows", "macos"}
    assert set(jobs["publish"]["needs"]) == {"linux", "windows", "macos"}
    runs = "\n".join(step.get("run", "") for job in jobs.values() for step in job["steps"])
    named = set(re.findall(r"installers[/\\][\w/\\.-]+\.(?:sh|py|spec|iss)", runs))
    assert {"installers/linux/build_deb.sh", "installers/linux/smoke_test.sh",
            "installers/macos/build_dmg.sh"} <= named
    for path in named:
        assert (ROOT / path.replace("\\", "/")).is_file(), path


@pytest.mark.parametrize("script", sorted(INSTALLERS.rglob("*.sh")), ids=lambda p: p.name)
def test_shell_scripts_parse(script: Path) -> None:
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None,
                    reason="desktop-file-validate (Debian: desktop-file-utils) not installed")
def test_the_desktop_entry_validates() -> None:
    done = subprocess.run(["desktop-file-validate", str(ROOT / f"resources/{DESKTOP_ID}.desktop")],
                          capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "")


@pytest.mark.skipif(shutil.which("appstreamcli") is None,
                    reason="appstreamcli (Debian: appstream) not installed")
def test_the_metainfo_validates() -> None:
    done = subprocess.run(["appstreamcli", "validate", "--no-net",
                           str(ROOT / f"resources/{DESKTOP_ID}.metainfo.xml")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def load_patch() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "torchvision_without_ops", INSTALLERS / "torchvision_without_ops.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_torchvision_patch_guards_every_fake_registration() -> None:
    found = importlib.util.find_spec("torchvision")
    if found is None or found.origin is None:
        pytest.skip("torchvision is not installed")
    original = (Path(found.origin).parent / "_meta_registrations.py").read_text(encoding="utf-8")
    patch = load_patch()
    if patch.ANCHOR not in original:
        pytest.skip("this torchvision's _meta_registrations.py differs from the patched one")
    patched = patch.guarded(original)
    compile(patched, "_meta_registrations.py", "exec")
    assert "@torch.library.register_fake(" not in patched
    assert patched.count("@_fake_if_ops(") == original.count("@torch.library.register_fake(")
    with pytest.raises(ValueError):
        patch.guarded("import torch\n")
