"""Parts of a library folder that cannot be seen are offline, not deleted; and imagesearch
never indexes its own data or other photo managers' libraries."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from imagesearch.config import Settings
from imagesearch.errors import FolderError
from imagesearch.services import scanning
from imagesearch.services.watch_queue import is_followed
from tests.conftest import noise_jpeg

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(os.name != "posix", reason="POSIX links and permissions")]


def photos(folder: Path, count: int, first_seed: int = 0) -> list[Path]:
    return [noise_jpeg(folder / f"p{first_seed + i}.jpg", first_seed + i)
            for i in range(count)]


def offline_parts(ctx: Any) -> dict[Path, str]:
    (folder,) = ctx.library.folders()
    return {p.path: p.reason for p in folder.offline_subfolders}


def with_unplugged_drive(ctx: Any, tmp_path: Path) -> tuple[Path, Path]:
    """Pictures (one photo) holding ``nas``, a link to a drive of two photos, indexed and
    then unplugged (moved to tmp_path/gone). Returns (Pictures, the drive's place)."""
    root, drive = tmp_path / "Pictures", tmp_path / "nas"
    photos(root, 1)
    photos(drive, 2, first_seed=10)
    os.symlink(drive, root / "nas")
    ctx.library.add_folder(root)
    ctx.indexing.run()
    drive.rename(tmp_path / "gone")
    ctx.indexing.run()
    return root, drive


def test_a_link_to_an_unplugged_drive_is_offline_not_deleted(context: Any,
                                                             tmp_path: Path) -> None:
    root, drive = tmp_path / "Pictures", tmp_path / "mnt" / "nas"
    photos(root, 1)
    photos(drive, 3, first_seed=10)
    os.symlink(drive, root / "nas")
    context.library.add_folder(root)
    assert context.indexing.run().added == 4
    drive.rename(tmp_path / "mnt" / "away")  # unplugged: the link dangles
    report = context.indexing.run()
    assert report.removed == 0 and root / "nas" in report.offline_folders
    assert sum(context.catalog.counts().values()) == 4
    assert "missing" in offline_parts(context)[root / "nas"]
    (tmp_path / "mnt" / "away").rename(drive)  # plugged back
    report = context.indexing.run()
    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 0, 0, 4)
    assert offline_parts(context) == {}


def test_a_nested_mount_that_goes_away_is_offline_then_back(
        context: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "Pictures"
    usb = root / "usb"
    photos(root, 1)
    on_usb = photos(usb, 3, first_seed=10)
    mounted = {"device": 4242}  # the drive mounted at usb, as the OS numbers it

    def device_of(path: Path, st: os.stat_result) -> int:
        return mounted["device"] if path == usb and mounted["device"] else st.st_dev

    monkeypatch.setattr(scanning, "device_of", device_of)
    context.library.add_folder(root)
    assert context.indexing.run().added == 4
    # Unmounted: the mount point is an empty folder on the parent's drive.
    saved = {p: p.read_bytes() for p in on_usb}
    for p in on_usb:
        p.unlink()
    mounted["device"] = 0
    report = context.indexing.run()
    assert report.removed == 0 and usb in report.offline_folders
    assert offline_parts(context) == {usb: "its drive is not mounted now"}
    assert sum(context.catalog.counts().values()) == 4
    # Mounted again, under a new device number, as remounts often are.
    for p, data in saved.items():
        p.write_bytes(data)
        os.utime(p, (context.library.photo(p).mtime,) * 2)
    mounted["device"] = 4343
    report = context.indexing.run()
    assert (report.embedded, report.removed, report.unchanged) == (0, 0, 4)
    assert offline_parts(context) == {}


def test_a_link_to_an_empty_mount_point_on_another_drive_is_offline(
        context: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # nas -> /mnt/nas: unmounted, /mnt/nas is an empty folder, still on another drive
    # than the link's folder (say /home and / are separate), but not the drive it was.
    root, target = tmp_path / "Pictures", tmp_path / "mnt" / "nas"
    on_nas = photos(target, 2)
    root.mkdir()
    os.symlink(target, root / "nas")
    devices = {"nas": 7000}

    def device_of(path: Path, st: os.stat_result) -> int:
        return devices["nas"] if path == root / "nas" else st.st_dev

    monkeypatch.setattr(scanning, "device_of", device_of)
    context.library.add_folder(root)
    assert context.indexing.run().added == 2
    for p in on_nas:
        p.unlink()
    devices["nas"] = 7001  # the bare mount point's drive: neither the parent's nor the NAS
    report = context.indexing.run()
    assert report.removed == 0
    assert "empty" in offline_parts(context)[root / "nas"]


def test_an_unreadable_subfolder_is_shown_offline(context: Any, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "Pictures"
    photos(root / "private", 2)
    photos(root, 1, first_seed=5)
    context.library.add_folder(root)
    context.indexing.run()
    real_scandir = os.scandir

    def no_entry(path: Any) -> Any:
        if Path(path) == root / "private":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", no_entry)
    assert context.indexing.run().removed == 0
    assert offline_parts(context) == {root / "private": "cannot be read (Permission denied)"}
    monkeypatch.undo()
    context.indexing.run()
    assert offline_parts(context) == {}


def test_an_offline_part_can_be_forgotten_from_the_cli(
        context: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from imagesearch.cli.main import main

    root, _ = with_unplugged_drive(context, tmp_path)
    context.close()
    monkeypatch.setenv("IMAGESEARCH_MODELS", str(context.settings.models_dir))
    cli = ["--library", str(context.settings.library_dir), "--model",
           context.settings.model_id]
    assert main([*cli, "status"]) == 0
    assert f"[offline] {root / 'nas'}" in capsys.readouterr().out
    assert main([*cli, "remove", str(root / "nas")]) == 0
    assert "2 photos forgotten" in capsys.readouterr().out
    assert main([*cli, "status"]) == 0
    out = capsys.readouterr().out
    assert "[offline]" not in out and "1/1 indexed" in out


def test_the_watcher_follows_a_drive_that_comes_back(context: Any, tmp_path: Path) -> None:
    from imagesearch.services.watching import FolderWatcher

    root, drive = with_unplugged_drive(context, tmp_path)
    assert root / "nas" in offline_parts(context)
    watcher = FolderWatcher(context.indexing, context.library, debounce_s=0.2, settle_s=0.1)
    watcher.root_check_s = 0.2
    watcher.start()
    try:
        noise_jpeg(tmp_path / "gone" / "while-away.jpg", 30)
        (tmp_path / "gone").rename(drive)  # plugged back in
        back = root / "nas" / "while-away.jpg"
        deadline = time.monotonic() + 30
        # The rescan marks the part online as it walks it, then indexes what is new there.
        while (offline_parts(context) or context.library.photo(back) is None) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert offline_parts(context) == {}
        assert context.library.photo(back) is not None
    finally:
        watcher.stop()


# imagesearch's own data, other apps' libraries, hidden folders ---------------------------

def test_its_own_data_is_never_indexed(make_settings: Any, shared_encoder: Any,
                                       tmp_path: Path) -> None:
    from imagesearch.services.context import build_context

    root = tmp_path / "Pictures"
    photos(root, 2)
    settings: Settings = make_settings(library_dir=root / "imagesearch-library")
    ctx = build_context(settings, encoder=shared_encoder)
    try:
        photos(settings.thumbnails_dir / "ab", 3, first_seed=20)  # its thumbnail cache
        with pytest.raises(FolderError, match="imagesearch's own data"):
            ctx.library.add_folder(settings.thumbnails_dir)
        ctx.library.add_folder(root)
        assert ctx.indexing.run().added == 2
        report = ctx.indexing.update_paths([settings.thumbnails_dir / "ab" / "p20.jpg"])
        assert report.added == 0
        assert not is_followed(settings.thumbnails_dir / "ab" / "p21.jpg", [root], False,
                               ctx.indexing.excluded)
    finally:
        ctx.close()


def test_photo_manager_libraries_are_skipped(context: Any, tmp_path: Path) -> None:
    root = tmp_path / "Pictures"
    photos(root, 1)
    photos(root / "Photos Library.photoslibrary" / "originals" / "A", 2, first_seed=10)
    photos(root / "Catalog Previews.lrdata" / "0", 2, first_seed=20)
    photos(root / "Aperture Library.aplibrary" / "Masters", 1, first_seed=30)
    context.library.add_folder(root)
    assert context.indexing.run().added == 1
    inside = root / "Photos Library.photoslibrary" / "originals" / "A" / "new.jpg"
    assert not is_followed(inside, [root], False)


def test_folders_the_system_hides_are_skipped(context: Any, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert scanning.os_hidden(SimpleNamespace(st_flags=stat.UF_HIDDEN))  # type: ignore[arg-type]
    assert scanning.os_hidden(SimpleNamespace(  # type: ignore[arg-type]
        st_file_attributes=stat.FILE_ATTRIBUTE_HIDDEN))
    assert not scanning.os_hidden(os.stat(tmp_path))
    root = tmp_path / "Pictures"
    photos(root, 1)
    photos(root / "hidden-by-finder", 2, first_seed=10)
    hidden_inode = os.stat(root / "hidden-by-finder").st_ino
    monkeypatch.setattr(scanning, "os_hidden",
                        lambda st: getattr(st, "st_ino", None) == hidden_inode)
    context.library.add_folder(root)
    assert context.indexing.run().added == 1
    report = context.indexing.update_paths([root / "hidden-by-finder" / "p10.jpg"])
    assert report.added == 0
