"""Asking a running imagesearch for a search's answer, before loading anything heavy.

Only the standard library is imported here: when no app answers (no socket, a stale
one, another library or model, a slow or failing answer), the caller searches
in-process as if this had never been tried. See services/query_server.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
from pathlib import Path
from typing import Any

CONNECT_TIMEOUT_S = 0.5  # an app that does not accept by then is not waited for
ANSWER_TIMEOUT_S = 60.0  # a re-ranked image query can take seconds on a busy machine
PROTOCOL_VERSION = 1  # services.query_server.PROTOCOL_VERSION, without importing it


def ask_running_app(args: argparse.Namespace, library_dir: Path, model_id: str,
                    image_weight: float, top_k: int) -> dict[str, Any] | None:
    """The app's reply ({"hits": [...], "notes": [...]}) or None to search in-process."""
    text = " ".join(args.text)
    if args.image is not None and not args.image.is_file():
        return None  # the in-process path explains the problem
    request = {"v": PROTOCOL_VERSION, "library": str(library_dir), "model": model_id,
               "text": text, "image": str(args.image.resolve()) if args.image else None,
               "image_weight": image_weight, "top_k": top_k,
               "folder": str(args.folder.resolve()) if args.folder else None,
               "rerank": args.rerank, "shortlist": args.shortlist}
    sock = _connect(library_dir, request)
    if sock is None:
        return None
    with sock:
        try:
            sock.settimeout(ANSWER_TIMEOUT_S)
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
            reply = json.loads(data)
        except (OSError, ValueError):
            return None
    if not isinstance(reply, dict) or not reply.get("ok") or reply.get("v") != PROTOCOL_VERSION:
        return None
    return reply


def _connect(library_dir: Path, request: dict[str, Any]) -> socket.socket | None:
    path = library_dir / "query.sock"
    sock: socket.socket | None = None
    try:
        if hasattr(socket, "AF_UNIX") and path.exists():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(str(path))
            return sock
        token_file = library_dir / "query.token"
        if token_file.exists():
            address = json.loads(token_file.read_text(encoding="utf-8"))
            request["token"] = address["token"]
            sock = socket.create_connection(("127.0.0.1", int(address["port"])),
                                            timeout=CONNECT_TIMEOUT_S)
            return sock
    except (OSError, ValueError, KeyError, TypeError):
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
    return None


def print_hits(hits: list[dict[str, Any]], notes: list[str], as_json: bool) -> None:
    """What `imagesearch search` prints, whoever found the hits."""
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if as_json:
        json.dump(hits, sys.stdout, ensure_ascii=False, indent=1)
        sys.stdout.write("\n")
    elif not hits:
        print("no results (is the library indexed? see `imagesearch status`)", file=sys.stderr)
    else:
        for h in hits:
            box = h.get("box")
            where = "" if box is None else "  [box " + " ".join(f"{v:.0f}" for v in box) + "]"
            print(f"{h['score']:6.3f}  {h['path']}{where}")
