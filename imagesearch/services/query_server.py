"""Answering command-line searches from a running app, over a local owner-only socket.

While the desktop app (or `imagesearch watch`) has a library open, its model is loaded
and its index is in memory; a `imagesearch search` in a terminal then asks it instead
of loading both again, and answers in a fraction of a cold start.

Where: a Unix socket ``query.sock`` in the library folder, created with mode 0600; on
Linux the server also checks the caller's user id (SO_PEERCRED). Where Unix sockets are
missing (older Windows), a loopback TCP port whose number and a random token are in
``query.token`` (mode 0600), and a request must carry the token. Nothing listens on a
network interface.

Protocol (PROTOCOL_VERSION): one JSON line each way per connection. The request names
the library and model it expects, so a server for another library or model is never
asked to answer for it; any mismatch or error sends the client back to searching
in-process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagesearch.domain import Query, SearchHit

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
SOCKET_NAME = "query.sock"
TOKEN_NAME = "query.token"
MAX_REQUEST = 1 << 16
_IO_TIMEOUT_S = 120.0  # one search; a client that stops talking is dropped after this

# (query, rerank, shortlist) -> (hits, notes)
Answer = Callable[[Query, bool | None, int | None], tuple[list[SearchHit], list[str]]]


def use_unix_socket() -> bool:
    return hasattr(socket, "AF_UNIX") and os.name != "nt"


def hit_json(h: SearchHit) -> dict[str, Any]:
    """A hit as the CLI's --json prints it, and as it travels over the socket."""
    return {"path": str(h.path), "score": round(h.score, 6), "id": h.photo_id,
            "global_score": None if h.global_score is None else round(h.global_score, 6),
            "rerank_score": h.rerank_score,
            "width": h.width, "height": h.height, "size": h.size,
            "captured_at": h.captured_at.isoformat() if h.captured_at else None,
            "box": None if h.box is None else h.box.as_list()}


class QueryServer:
    """Serves searches for one library and model until ``stop()``."""

    def __init__(self, library_dir: Path, model_id: str, answer: Answer,
                 force_tcp: bool = False) -> None:
        self.library_dir = library_dir
        self.model_id = model_id
        self._answer = answer
        self._unix = use_unix_socket() and not force_tcp
        self._token = secrets.token_hex(16)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def address_file(self) -> Path:
        return self.library_dir / (SOCKET_NAME if self._unix else TOKEN_NAME)

    def start(self) -> bool:
        """Listen; False (and a log line) if another live server owns the library."""
        try:
            sock = self._listen()
        except OSError as exc:
            log.info("not answering command-line searches: %s", exc)
            return False
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="imagesearch-query-server",
                                        daemon=True)
        self._thread.start()
        return True

    def _listen(self) -> socket.socket:
        path = self.address_file
        if self._unix:
            if path.exists():
                if _answers(path):
                    raise OSError(f"another imagesearch serves {self.library_dir}")
                path.unlink()  # left by a process that ended without closing
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)  # the socket file is born owner-only
            try:
                sock.bind(str(path))
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"port": port, "token": self._token}, fh)
            os.replace(tmp, path)
        sock.listen(8)
        sock.settimeout(0.25)  # stop() is noticed within this where shutdown does not wake it
        return sock

    @property
    def stopping(self) -> threading.Event:
        """Set by stop(): a search being answered is cancelled with it."""
        return self._stopping

    def stop(self) -> bool:
        """Stop answering; False if the answer under way had not ended after the wait."""
        self._stopping.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept() at once on Linux
        ended = True
        if self._thread is not None:
            self._thread.join(5.0)
            ended = not self._thread.is_alive()
        if self._sock is not None:
            self._sock.close()
            with contextlib.suppress(OSError):
                self.address_file.unlink()
        self._sock = None
        return ended

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(_IO_TIMEOUT_S)
                try:
                    reply = self._handle(conn)
                except Exception as exc:  # one bad request never stops the server
                    reply = {"v": PROTOCOL_VERSION, "ok": False, "error": str(exc)}
                try:
                    # ASCII escapes: a path that is not valid UTF-8 (lone surrogates from
                    # os.fsdecode) travels as \udcxx and comes back as it was.
                    conn.sendall(json.dumps(reply).encode("ascii") + b"\n")
                except OSError:
                    pass  # the client went away
                except Exception:  # never let one answer stop the server
                    log.exception("a command-line search could not be answered")

    def _handle(self, conn: socket.socket) -> dict[str, Any]:
        if self._unix and not _same_user(conn):
            return {"v": PROTOCOL_VERSION, "ok": False, "error": "not the library's owner"}
        request = json.loads(_read_line(conn))
        if not self._unix and not secrets.compare_digest(str(request.get("token", "")),
                                                         self._token):
            return {"v": PROTOCOL_VERSION, "ok": False, "error": "bad token"}
        if request.get("v") != PROTOCOL_VERSION:
            return {"v": PROTOCOL_VERSION, "ok": False, "error": "protocol version"}
        if (Path(request["library"]).resolve() != self.library_dir.resolve()
                or request.get("model") != self.model_id):
            return {"v": PROTOCOL_VERSION, "ok": False, "error": "another library or model"}
        query = Query(text=str(request.get("text", "")),
                      image=Path(request["image"]) if request.get("image") else None,
                      image_weight=float(request["image_weight"]),
                      top_k=int(request["top_k"]),
                      folder=Path(request["folder"]) if request.get("folder") else None)
        hits, notes = self._answer(query, request.get("rerank"), request.get("shortlist"))
        return {"v": PROTOCOL_VERSION, "ok": True, "hits": [hit_json(h) for h in hits],
                "notes": notes}


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too long")
    return data


def _same_user(conn: socket.socket) -> bool:
    """The caller runs as this process's user (Linux; elsewhere the 0600 file decides)."""
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:
        return True
    creds = conn.getsockopt(socket.SOL_SOCKET, peercred, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


def _answers(path: Path) -> bool:
    """Someone is listening on this socket file (else it is stale)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()
