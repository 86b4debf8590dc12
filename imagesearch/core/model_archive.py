"""Model archives: installed weights packed on one computer, installed on another (offline).

An archive is an uncompressed tar (checkpoints barely compress) whose first entry is
``imagesearch-model.json``::

    {"format": "imagesearch-model", "version": 1, "model_id": "ARCH/TAG",
     "files": {"checkpoint": {"name": ..., "size": ..., "sha256": ...},
               "config": {...}},            # only for an architecture open_clip lacks
     "source": ..., "packed_by": "imagesearch X.Y"}

followed by the files it lists, at the top level. The manifest comes first so that an
archive is recognised from its first block, and refused before gigabytes are read.
Installing never extracts anything by the names in the archive: each entry must be a
regular file the manifest lists, and its bytes go through the weight store's staging,
checked against the manifest, all or nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO

from imagesearch import __version__
from imagesearch.core.model_registry import parse_model_id
from imagesearch.core.weights import (
    CHECKPOINT_SUFFIXES,
    DownloadProgress,
    InstalledWeights,
    WeightStore,
)
from imagesearch.errors import ChecksumMismatch, ModelFileError, ModelUnavailable

ARCHIVE_MANIFEST = "imagesearch-model.json"
FORMAT = "imagesearch-model"
VERSION = 1
_MANIFEST_MAX = 64 * 1024
_CONFIG_MAX = 4 * 1024 * 1024
_BLOCK = 512


@dataclass(frozen=True, slots=True)
class ArchivedFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ArchiveManifest:
    model_id: str
    checkpoint: ArchivedFile
    config: ArchivedFile | None
    source: str


def is_model_archive(path: Path) -> bool:
    """True when ``path`` starts like a model archive (its first tar entry is the manifest).

    A checkpoint is never mistaken for one: a ``.pt`` file is a zip, a ``.safetensors`` file
    starts with a JSON header's length, and neither carries a tar header's ``ustar`` mark.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(_BLOCK)
    except OSError:
        return False
    name = head[:100].split(b"\0", 1)[0]
    return len(head) == _BLOCK and head[257:262] == b"ustar" \
        and name == ARCHIVE_MANIFEST.encode()


def pack_model(store: WeightStore, model_id: str, dest: Path,
               progress: DownloadProgress | None = None) -> ArchiveManifest:
    """Write the installed weights of ``model_id`` (and its config) to the archive ``dest``.

    The checkpoint is hashed as it is copied, and must still match the sha256 its install
    recorded: a file damaged since is not passed on.

    Raises:
        ModelUnavailable: the model is not installed here.
        ChecksumMismatch: the installed checkpoint no longer matches its manifest.
        ModelFileError: ``dest`` cannot be written.
    """
    installed = store.installed(model_id)
    if installed is None:
        raise ModelUnavailable(
            f"{model_id} is not installed here, so there is nothing to pack; "
            f"`imagesearch models download {model_id}` fetches it")
    home = installed.path.parent.resolve()
    target = dest.resolve()
    if target == home or home in target.parents:
        # Replacing the checkpoint (or its manifest) by the archive would break the very
        # install being packed.
        raise ModelFileError(f"{dest} is inside the installed model's folder {home}; "
                             "write the archive somewhere else")
    config = None
    config_bytes = b""
    if installed.config is not None:
        config_bytes = installed.config.read_bytes()
        config = ArchivedFile(installed.config.name, len(config_bytes),
                              hashlib.sha256(config_bytes).hexdigest())
    manifest = ArchiveManifest(
        model_id, ArchivedFile(installed.path.name, installed.size, installed.sha256),
        config, installed.source)
    tmp = dest.with_name(dest.name + ".partial")
    try:
        # GNU format: short names get a plain first header (so the manifest is found in the
        # first block), and sizes past ustar's 8 GiB are still written.
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
            _add_bytes(tar, ARCHIVE_MANIFEST, _manifest_json(manifest))
            if config is not None:
                _add_bytes(tar, config.name, config_bytes)
            with open(installed.path, "rb") as src:
                reader = _HashingReader(src, installed.size, progress)
                tar.addfile(_member(installed.path.name, installed.size), reader)
        if reader.digest.hexdigest() != installed.sha256:
            raise ChecksumMismatch(
                f"the installed checkpoint {installed.path} no longer matches the sha256 its "
                f"install recorded; install or download {model_id} again before packing it")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        raise ModelFileError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


def install_archive(store: WeightStore, archive: Path, expected_model_id: str | None = None,
                    progress: DownloadProgress | None = None) -> InstalledWeights:
    """Check an archive written by pack_model and install what it holds.

    Raises:
        ModelFileError: not a model archive, damaged, truncated, holding an entry the
            manifest does not list (a path outside the archive, a link, a device), or
            holding another model than ``expected_model_id``.
        ChecksumMismatch: a file's size or sha256 differs from the manifest's.
    """
    try:
        return _install(store, archive, expected_model_id, progress)
    except OSError as exc:  # the models folder: full, read-only, gone (staging is undone)
        raise ModelFileError(f"cannot install from {archive} into {store.root}: "
                             f"{exc.strerror or exc}") from None


def _install(store: WeightStore, archive: Path, expected_model_id: str | None,
             progress: DownloadProgress | None) -> InstalledWeights:
    with _open(archive) as tar:
        manifest = _read_manifest(tar, archive)
        if expected_model_id is not None and expected_model_id != manifest.model_id:
            raise ModelFileError(f"{archive} holds {manifest.model_id}, not {expected_model_id}")
        wanted = {f.name: f for f in (manifest.checkpoint, manifest.config) if f is not None}
        with store.staging(manifest.model_id) as stage:
            for member in _members(tar):
                entry = _listed(member, wanted, archive)
                del wanted[entry.name]
                data = _extract(tar, member, archive)
                label = f"{entry.name} in {archive}"
                if entry is manifest.config:
                    stage.config = _read_config(data, entry, label)
                else:
                    stage.receive(entry.name, data, entry.sha256, entry.size, label, progress)
            if wanted:
                raise ModelFileError(f"{archive} is incomplete: {', '.join(sorted(wanted))} "
                                     f"missing (a truncated copy?)")
            return stage.commit(manifest.source or f"archive:{archive.name}")


# Packing --------------------------------------------------------------------------------


def _manifest_json(m: ArchiveManifest) -> bytes:
    files: dict[str, Any] = {"checkpoint": _file_json(m.checkpoint)}
    if m.config is not None:
        files["config"] = _file_json(m.config)
    data = {"format": FORMAT, "version": VERSION, "model_id": m.model_id, "files": files,
            "source": m.source, "packed_by": f"imagesearch {__version__}"}
    return json.dumps(data, indent=2).encode()


def _file_json(f: ArchivedFile) -> dict[str, Any]:
    return {"name": f.name, "size": f.size, "sha256": f.sha256}


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_member(name, len(data)), io.BytesIO(data))


class _HashingReader:
    """A file object that hashes (and reports) what tarfile copies out of it."""

    def __init__(self, src: BinaryIO, total: int, progress: DownloadProgress | None) -> None:
        self.src, self.total, self.progress = src, total, progress
        self.digest = hashlib.sha256()
        self.done = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.src.read(size)
        self.digest.update(chunk)
        self.done += len(chunk)
        if self.progress is not None:
            self.progress(self.done, self.total)
        return chunk


# Installing -----------------------------------------------------------------------------


@contextmanager
def _open(archive: Path) -> Iterator[tarfile.TarFile]:
    if not archive.is_file():
        raise ModelFileError(f"no such file: {archive}")
    if not is_model_archive(archive):
        raise ModelFileError(f"{archive} is not an imagesearch model archive "
                             f"(`imagesearch models pack` writes them)")
    try:
        # Errors while reading (a header or data cut off) surface here, wherever in the
        # body they were raised; the staging has already removed what it had written.
        with tarfile.open(archive, "r:") as tar:
            yield tar
    except (tarfile.TarError, EOFError) as exc:
        raise ModelFileError(f"{archive} is damaged or truncated ({exc})") from None


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The entries after the manifest (iterating the TarFile would yield it again)."""
    while (member := tar.next()) is not None:
        yield member


def _read_manifest(tar: tarfile.TarFile, archive: Path) -> ArchiveManifest:
    first = tar.next()
    if first is None or first.name != ARCHIVE_MANIFEST or not first.isreg() \
            or first.size > _MANIFEST_MAX:
        raise ModelFileError(f"{archive} does not start with a readable {ARCHIVE_MANIFEST}")
    raw = _extract(tar, first, archive).read()
    try:
        data = json.loads(raw)
        if data.get("format") != FORMAT:
            raise ValueError("not an imagesearch model manifest")
        if data.get("version") != VERSION:
            raise ValueError(f"format version {data.get('version')!r}; this imagesearch "
                             f"reads version {VERSION}")
        model_id = str(data["model_id"])
        parse_model_id(model_id)
        files = data["files"]
        checkpoint = _file_entry(files["checkpoint"])
        config = _file_entry(files["config"]) if files.get("config") is not None else None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelFileError(f"{archive} has an unusable {ARCHIVE_MANIFEST}: {exc}") from None
    if PurePosixPath(checkpoint.name).suffix not in CHECKPOINT_SUFFIXES:
        raise ModelFileError(f"{archive}: {checkpoint.name!r} is not a checkpoint file name")
    if config is not None and (config.name == checkpoint.name or config.size > _CONFIG_MAX):
        raise ModelFileError(f"{archive} has an unusable {ARCHIVE_MANIFEST}: bad config entry")
    return ArchiveManifest(model_id, checkpoint, config, str(data.get("source", "")))


def _file_entry(data: dict[str, Any]) -> ArchivedFile:
    name, size, sha = str(data["name"]), int(data["size"]), str(data["sha256"]).lower()
    if not _plain_name(name) or name == ARCHIVE_MANIFEST:
        raise ValueError(f"unsafe file name {name!r}")
    if size < 0 or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"bad size or sha256 for {name!r}")
    return ArchivedFile(name, size, sha)


def _plain_name(name: str) -> bool:
    """A bare file name: no folder part, nothing absolute, no '..', no drive or backslash."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\:\0")


def _listed(member: tarfile.TarInfo, wanted: dict[str, ArchivedFile],
            archive: Path) -> ArchivedFile:
    name = member.name
    if not _plain_name(name):
        raise ModelFileError(f"{archive} holds an entry with an unsafe path ({name!r}); refused")
    if not member.isreg():
        raise ModelFileError(f"{archive} holds {name!r}, which is a link or special file, "
                             f"not a regular file; refused")
    entry = wanted.get(name)
    if entry is None:
        raise ModelFileError(f"{archive} holds {name!r}, which its manifest does not list "
                             f"(or lists once); refused")
    if member.size != entry.size:
        raise ChecksumMismatch(f"{name} in {archive} has {member.size} bytes, the manifest "
                               f"says {entry.size}")
    return entry


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> IO[bytes]:
    reader = tar.extractfile(member)
    if reader is None:
        raise ModelFileError(f"{archive}: {member.name!r} cannot be read")
    return reader


def _read_config(data: IO[bytes], entry: ArchivedFile, label: str) -> bytes:
    raw = data.read(entry.size + 1)
    sha = hashlib.sha256(raw).hexdigest()
    if len(raw) != entry.size or sha != entry.sha256:
        raise ChecksumMismatch(f"{label} has sha256 {sha}, expected {entry.sha256}")
    return raw
