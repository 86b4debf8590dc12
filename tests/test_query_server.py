"""A running app answers command-line searches over its owner-only local socket."""

from __future__ import annotations

import argparse
import json
import socket
import stat
import time
from pathlib import Path

import pytest

from imagesearch.cli import main as cli_main
from imagesearch.cli.remote import ask_running_app
from imagesearch.domain import Box, Query, SearchHit
from imagesearch.services.query_server import QueryServer, use_unix_socket

MODEL = "Some-ViT/tag"


def _args(text: str = "red tram", image: Path | None = None) -> argparse.Namespace:
    return argparse.Namespace(text=text.split(), image=image, folder=None, rerank=None,
                              shortlist=None)


@pytest.fixture
def asked() -> list[Query]:
    return []


def _server(library: Path, asked: list[Query], force_tcp: bool = False) -> QueryServer:
    def answer(query: Query, rerank: bool | None, shortlist: int | None
               ) -> tuple[list[SearchHit], list[str]]:
        asked.append(query)
        return [SearchHit(3, library / "a.jpg", 0.5, box=Box(1, 2, 3, 4))], ["a note"]

    return QueryServer(library, MODEL, answer, force_tcp=force_tcp)


@pytest.mark.parametrize("force_tcp", [False, True])
def test_a_query_is_answered_by_the_server(tmp_path: Path, asked: list[Query],
                                           force_tcp: bool) -> None:
    server = _server(tmp_path, asked, force_tcp)
    assert server.start()
    try:
        address = server.address_file
        assert stat.S_IMODE(address.stat().st_mode) == 0o600
        reply = ask_running_app(_args(), tmp_path, MODEL, 0.5, 7)
        assert reply is not None and reply["notes"] == ["a note"]
        assert reply["hits"][0]["path"] == str(tmp_path / "a.jpg")
        assert reply["hits"][0]["box"] == [1, 2, 3, 4]
        assert asked[0].text == "red tram" and asked[0].top_k == 7
        # Another library or model is not answered for: the client searches itself.
        assert ask_running_app(_args(), tmp_path, "Other/model", 0.5, 7) is None
    finally:
        server.stop()
    assert not address.exists()
    assert ask_running_app(_args(), tmp_path, MODEL, 0.5, 7) is None  # nobody listens now


def test_a_wrong_token_is_refused(tmp_path: Path, asked: list[Query]) -> None:
    server = _server(tmp_path, asked, force_tcp=True)
    assert server.start()
    try:
        address = json.loads(server.address_file.read_text())
        with socket.create_connection(("127.0.0.1", address["port"]), timeout=5) as sock:
            sock.sendall(json.dumps({"v": 1, "token": "guess", "library": str(tmp_path),
                                     "model": MODEL, "text": "x", "image_weight": 0.5,
                                     "top_k": 3}).encode() + b"\n")
            reply = json.loads(sock.makefile().readline())
        assert reply == {"v": 1, "ok": False, "error": "bad token"} and not asked
    finally:
        server.stop()


@pytest.mark.skipif(not use_unix_socket(), reason="Unix sockets only")
def test_a_stale_socket_file_is_replaced(tmp_path: Path, asked: list[Query]) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "query.sock"))
    stale.close()  # the file stays, as after a crash
    start = time.monotonic()
    assert ask_running_app(_args(), tmp_path, MODEL, 0.5, 5) is None
    assert time.monotonic() - start < 2.0
    server = _server(tmp_path, asked)
    assert server.start()
    try:
        assert ask_running_app(_args(), tmp_path, MODEL, 0.5, 5) is not None
        # A second server for the same library sees a live one and stays out.
        assert not _server(tmp_path, asked).start()
    finally:
        server.stop()


def test_cli_search_is_answered_by_a_running_context(context, photo_dir: Path,  # type: ignore[no-untyped-def]
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    context.library.add_folder(photo_dir)
    context.indexing.run()
    assert context.serve_queries()

    def no_local_search(_args: argparse.Namespace) -> None:
        raise AssertionError("searched in-process")

    monkeypatch.setattr(cli_main, "_preload", no_local_search)
    settings = context.settings
    (settings.library_dir / "settings.json").write_text(json.dumps(
        {"model_id": settings.model_id}))
    target = photo_dir / "trip" / "coffee.jpg"
    code = cli_main.main(["--library", str(settings.library_dir), "--model",
                          settings.model_id, "search", "--image", str(target), "--json",
                          "-k", "3", "--no-rerank"])
    assert code == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and hits[0]["path"] == str(target)


def test_a_path_that_is_not_utf8_is_answered_and_the_server_lives_on(
        tmp_path: Path) -> None:
    import os

    odd = tmp_path / os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 name: a lone surrogate

    def answer(query: Query, rerank: bool | None, shortlist: int | None
               ) -> tuple[list[SearchHit], list[str]]:
        return [SearchHit(3, odd, 0.5)], []

    server = QueryServer(tmp_path, MODEL, answer)
    assert server.start()
    try:
        for _ in range(2):  # the first answer did not stop the server
            reply = ask_running_app(_args(), tmp_path, MODEL, 0.5, 7)
            assert reply is not None and reply["hits"][0]["path"] == str(odd)
    finally:
        assert server.stop()


def test_stopping_cancels_the_search_being_answered(tmp_path: Path) -> None:
    import threading

    server: QueryServer
    entered = threading.Event()
    seen: list[bool] = []

    def answer(query: Query, rerank: bool | None, shortlist: int | None
               ) -> tuple[list[SearchHit], list[str]]:
        entered.set()
        seen.append(server.stopping.wait(30))  # a long re-rank that watches its cancel
        return [], []

    server = QueryServer(tmp_path, MODEL, answer)
    assert server.start()
    client = threading.Thread(target=ask_running_app, args=(_args(), tmp_path, MODEL, 0.5, 7))
    client.start()
    assert entered.wait(10)
    started = time.monotonic()
    assert server.stop()  # ended within its wait, because the answer was cancelled
    assert time.monotonic() - started < 5 and seen == [True]
    client.join(10)
