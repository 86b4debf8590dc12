"""Model weights on disk: the cache layout, downloading with checksums, installing a file.

Layout under the models folder::

    <arch>/<tag>/<weights file>     the checkpoint as published
    <arch>/<tag>/manifest.json      sha256, size, source
    configs/<arch>.json             architectures open_clip does not ship (installed by hand)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from imagesearch.core.model_registry import WEIGHTS_FILES, known_model, parse_model_id
from imagesearch.errors import ChecksumMismatch, ModelFileError, ModelUnavailable

DownloadProgress = Callable[[int, int], None]  # (bytes done, bytes total or 0)

MANIFEST = "manifest.json"
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_CHUNK = 1 << 20
_TIMEOUT_S = 15.0


class ByteSource(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class InstalledWeights:
    model_id: str
    path: Path
    sha256: str
    size: int
    source: str
    config: Path | None = None  # a custom architecture JSON installed beside it


def offline() -> bool:
    """True when the user asked for no network (Hugging Face's own switch is honoured)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "IMAGESEARCH_OFFLINE"))


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


class WeightStore:
    """Finds, downloads and installs checkpoints in one models folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def model_dir(self, model_id: str) -> Path:
        arch, tag = parse_model_id(model_id)
        return self.root / arch / tag

    @property
    def configs_dir(self) -> Path:
        return self.root / "configs"

    def installed(self, model_id: str) -> InstalledWeights | None:
        """The weights on disk for ``model_id`` if complete (size matches the manifest)."""
        folder = self.model_dir(model_id)
        try:
            data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            path = folder / data["file"]
            if path.stat().st_size != int(data["size"]):
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        arch, _ = parse_model_id(model_id)
        config = self.configs_dir / f"{arch}.json"
        return InstalledWeights(model_id, path, str(data["sha256"]), int(data["size"]),
                                str(data.get("source", "")), config if config.is_file() else None)

    def installed_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = []
        for manifest in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            model_id = f"{manifest.parent.parent.name}/{manifest.parent.name}"
            if self.installed(model_id):
                found.append(model_id)
        return found

    # Installing a file ---------------------------------------------------------------------

    def install_file(self, model_id: str, checkpoint: Path, config: Path | None = None,
                     expected_sha256: str | None = None,
                     progress: DownloadProgress | None = None) -> InstalledWeights:
        """Copy a checkpoint (and optionally its architecture JSON) into the store.

        Raises:
            ModelFileError: the checkpoint (or the config) is not a readable file.
            ChecksumMismatch: ``expected_sha256`` was given and does not match.
        """
        for given, what in ((checkpoint, "checkpoint"), (config, "config")):
            if given is not None and not given.is_file():
                raise ModelFileError(f"no such {what} file: {given}")
        name = checkpoint.name if checkpoint.suffix in CHECKPOINT_SUFFIXES \
            else checkpoint.name + ".bin"
        with self.staging(model_id) as stage, open(checkpoint, "rb") as src:
            stage.receive(name, src, expected_sha256, label=str(checkpoint),
                          progress=progress, total=checkpoint.stat().st_size)
            if config is not None:
                stage.config = config.read_bytes()
            return stage.commit(f"file:{checkpoint}")

    def staging(self, model_id: str) -> Staging:
        """Receive a checkpoint beside its final place; nothing changes until commit()."""
        return Staging(self, model_id)

    def remove(self, model_id: str) -> bool:
        folder = self.model_dir(model_id)
        if not folder.exists():
            return False
        shutil.rmtree(folder)
        return True

    @staticmethod
    def write_manifest(folder: Path, name: str, sha: str, size: int, source: str) -> None:
        data = {"file": name, "sha256": sha, "size": size, "source": source,
                "installed_at": datetime.now(UTC).isoformat(timespec="seconds")}
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        os.replace(tmp, folder / MANIFEST)

    # Downloading ---------------------------------------------------------------------------

    def download(self, model_id: str, progress: DownloadProgress | None = None
                 ) -> InstalledWeights:
        """Fetch the published checkpoint from Hugging Face, verifying its sha256.

        Raises:
            ModelUnavailable: offline, unreachable, or no such published checkpoint.
            ChecksumMismatch: the bytes received differ from what the server announced.
        """
        repo = self._hf_repo(model_id)
        if offline():
            raise ModelUnavailable(self._missing_message(
                model_id, "downloads are switched off (HF_HUB_OFFLINE / IMAGESEARCH_OFFLINE)"))
        last_error = "no weights file found"
        for filename in WEIGHTS_FILES:
            url = f"{hf_endpoint()}/{repo}/resolve/main/{filename}"
            try:
                return self._download_url(model_id, url, filename, progress)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    continue
                last_error = f"HTTP {exc.code} from {url}"
                break
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last_error = f"cannot reach {hf_endpoint()} ({reason})"
                break
        raise ModelUnavailable(self._missing_message(model_id, last_error))

    def download_file(self, model_id: str, url: str, filename: str,
                      progress: DownloadProgress | None = None) -> InstalledWeights:
        """Fetch a checkpoint published at ``url`` (outside Hugging Face) into the store.

        Where the host announces no checksum, the sha256 of what arrived is recorded in the
        manifest, so a later copy can be checked against this one.

        Raises:
            ModelUnavailable: offline or unreachable.
            ChecksumMismatch: fewer bytes arrived than announced.
        """
        if offline():
            raise ModelUnavailable(self._missing_message(
                model_id, "downloads are switched off (HF_HUB_OFFLINE / IMAGESEARCH_OFFLINE)"))
        try:
            return self._download_url(model_id, url, filename, progress)
        except urllib.error.HTTPError as exc:
            why = f"HTTP {exc.code} from {url}"
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            why = f"cannot reach {urllib.parse.urlsplit(url).netloc} " \
                  f"({getattr(exc, 'reason', exc)})"
        raise ModelUnavailable(self._missing_message(model_id, why))

    def _hf_repo(self, model_id: str) -> str:
        known = known_model(model_id)
        if known is not None:
            return known.hf_repo
        arch, tag = parse_model_id(model_id)
        try:
            import open_clip

            cfg: dict[str, Any] = open_clip.get_pretrained_cfg(arch, tag) or {}
        except Exception:
            cfg = {}
        hub = str(cfg.get("hf_hub", "")).strip("/")
        if not hub:
            raise ModelUnavailable(
                f"{model_id} is not a published open_clip checkpoint this app can download. "
                f"Install its weights with: imagesearch models install FILE --model {model_id}")
        return hub.split("/")[0] + "/" + hub.split("/")[1]

    def _download_url(self, model_id: str, url: str, filename: str,
                      progress: DownloadProgress | None) -> InstalledWeights:
        expected_sha, final_url = _announced_sha256(url)
        folder = self.model_dir(model_id)
        folder.mkdir(parents=True, exist_ok=True)
        request = urllib.request.Request(final_url, headers={"User-Agent": "imagesearch"})
        digest = hashlib.sha256()
        done = 0
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            with tempfile.NamedTemporaryFile(dir=folder, delete=False,
                                             suffix=".partial") as tmp:
                try:
                    while chunk := resp.read(_CHUNK):
                        tmp.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
                    tmp.flush()
                    os.fsync(tmp.fileno())
                except BaseException:
                    tmp.close()
                    os.unlink(tmp.name)
                    raise
        sha = digest.hexdigest()
        if (total and done != total) or (expected_sha and sha != expected_sha):
            os.unlink(tmp.name)
            raise ChecksumMismatch(
                f"download of {url} is damaged (sha256 {sha}, expected {expected_sha or '?'}, "
                f"{done} of {total} bytes); try again")
        os.replace(tmp.name, folder / filename)
        self.write_manifest(folder, filename, sha, done, url)
        result = self.installed(model_id)
        assert result is not None
        return result

    def _missing_message(self, model_id: str, why: str) -> str:
        return (
            f"The weights for {model_id} are not installed and could not be downloaded: {why}. "
            f"Connect to the internet and run `imagesearch models download {model_id}`, or "
            f"fetch the checkpoint on another machine and run "
            f"`imagesearch models install FILE --model {model_id}`."
        )


class Staging:
    """A checkpoint (and its config) on its way into the store: all of it, or none of it.

    The checkpoint is written to a temporary file in its model folder and checked there;
    commit() moves it into place and writes the manifest; leaving the ``with`` block
    without commit() removes what was written.
    """

    def __init__(self, store: WeightStore, model_id: str) -> None:
        self.store = store
        self.model_id = model_id
        self.arch, _ = parse_model_id(model_id)
        self.config: bytes | None = None  # an architecture JSON to install beside it
        self._tmp: Path | None = None
        self._created: list[Path] = []  # folders made for it, removed again if not committed
        self._name = ""
        self._sha = ""
        self._size = 0

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
            for folder in self._created:  # innermost first; kept if anything else is there
                try:
                    folder.rmdir()
                except OSError:
                    break

    def receive(self, name: str, src: ByteSource, expected_sha256: str | None = None,
                expected_size: int | None = None, label: str = "",
                progress: DownloadProgress | None = None, total: int = 0) -> str:
        """Copy ``src`` to a temporary file, hashing it; returns its sha256.

        Raises:
            ChecksumMismatch: the size or sha256 is not the expected one.
        """
        folder = self.store.model_dir(self.model_id)
        if not self._created:
            self._created = [f for f in (folder, folder.parent) if not f.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        if self._tmp is not None:  # a second checkpoint replaces the first
            self._tmp.unlink(missing_ok=True)
        digest = hashlib.sha256()
        done = 0
        with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".partial") as tmp:
            self._tmp = Path(tmp.name)
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                tmp.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, expected_size or total)
            tmp.flush()
            os.fsync(tmp.fileno())
        sha = digest.hexdigest()
        what = label or name
        if expected_size is not None and done != expected_size:
            raise ChecksumMismatch(f"{what} has {done} bytes, expected {expected_size}")
        if expected_sha256 and sha != expected_sha256.lower():
            raise ChecksumMismatch(f"{what} has sha256 {sha}, expected {expected_sha256}")
        self._name, self._sha, self._size = name, sha, done
        return sha

    def commit(self, source: str) -> InstalledWeights:
        """Put the received checkpoint (and config) in place and write the manifest."""
        if self._tmp is None:
            raise ModelFileError(f"no checkpoint was received for {self.model_id}")
        folder = self.store.model_dir(self.model_id)
        os.replace(self._tmp, folder / self._name)
        self._tmp = None
        if self.config is not None:
            configs = self.store.configs_dir
            configs.mkdir(parents=True, exist_ok=True)
            tmp = configs / f"{self.arch}.json.tmp"
            tmp.write_bytes(self.config)
            os.replace(tmp, configs / f"{self.arch}.json")
        self.store.write_manifest(folder, self._name, self._sha, self._size, source)
        result = self.store.installed(self.model_id)
        assert result is not None
        return result


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _announced_sha256(url: str) -> tuple[str | None, str]:
    """Ask the hub (HEAD, no redirect) for the file's sha256 and where it really lives.

    Hugging Face stores weights in LFS and announces their sha256 in X-Linked-Etag
    (or ETag) before redirecting to the CDN.
    """
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "imagesearch"})
    try:
        resp = opener.open(request, timeout=_TIMEOUT_S)
        headers, location = resp.headers, url
    except urllib.error.HTTPError as exc:
        if exc.code not in (301, 302, 303, 307, 308):
            raise
        headers = exc.headers
        location = urllib.parse.urljoin(url, headers.get("Location") or url)
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").strip('"').lower()
    etag = etag.removeprefix("w/").strip('"')
    sha = etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None
    return sha, location
