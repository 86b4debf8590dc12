"""The ASMK inverted file's storage: flat postings, a base that is merged and memory-mapped,
photos waiting beside it, and a journal of the changes since the base was written."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import pytest

from imagesearch.core import local_index, local_index_file, postings
from imagesearch.core.local_features import LocalFeatures
from imagesearch.core.local_index import Aggregated, InvertedFile, Vocabulary
from imagesearch.core.local_index_file import journal_path, lock_path, read_base
from imagesearch.errors import IndexFileError, IndexUnavailableError

K = 64


@pytest.fixture(scope="module")
def vocabulary() -> Vocabulary:
    rng = np.random.default_rng(0)
    # Rounded as a saved vocabulary is, so a loaded one assigns alike (as Vocabulary.train).
    return Vocabulary(rng.standard_normal((K, 128)).astype(np.float16).astype(np.float32))


def signature(seed: int, words: int = 20) -> Aggregated:
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(K, words, replace=False))
    codes = rng.integers(0, 2 ** 63, (words, 2), dtype=np.int64).astype(np.uint64)
    return Aggregated(chosen.astype(np.int64), codes)


def naive_scores(query: Aggregated, photos: dict[int, Aggregated]) -> dict[int, float]:
    """ASMK* by its definition, one photo and word at a time."""
    df = np.zeros(K)
    for agg in photos.values():
        df[agg.words] += 1
    idf = np.log((len(photos) + 1.0) / (df + 1.0))
    q_norm = np.sqrt(max((idf[query.words] ** 2).sum(), 1e-9))
    out = {}
    for pid, agg in photos.items():
        total = 0.0
        for i, w in enumerate(query.words):
            j = np.flatnonzero(agg.words == w)
            if len(j):
                h = sum(bin(int(a) ^ int(b)).count("1")
                        for a, b in zip(query.codes[i], agg.codes[j[0]], strict=True))
                u = 1.0 - 2.0 * h / 128.0
                total += idf[w] ** 2 * (u ** 3 if u > 0 else 0.0)
        p_norm = np.sqrt(max((idf[agg.words] ** 2).sum(), 1e-9))
        out[pid] = total / (p_norm * q_norm)
    return out


def merged_scores(inverted: InvertedFile, query: Aggregated) -> dict[int, float]:
    base = inverted._base
    raw = postings.score(query.words, query.codes, base, base.idf)
    q_norm = np.sqrt(max(float((base.idf[query.words] ** 2).sum()), 1e-9))
    return {int(pid): float(s / q_norm) for pid, s in zip(base.ids, raw, strict=True)}


def features_near(vocabulary: Vocabulary, seed: int, n: int = 40) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    d = vocabulary.centroids[rng.integers(0, K, n)] \
        + 0.05 * rng.standard_normal((n, 128)).astype(np.float32)
    return LocalFeatures(d.astype(np.float32), rng.random((n, 2), np.float32) * 100,
                         np.ones(n, np.float32), np.zeros(n, np.float32), 100, 100)


def saved_index(vocabulary: Vocabulary, path: Path) -> InvertedFile:
    """60 photos, merged and saved at ``path``."""
    inverted = InvertedFile(vocabulary)
    inverted.add_many([(pid, features_near(vocabulary, pid), "v") for pid in range(60)])
    inverted.save(path, "x")
    return inverted


def test_merged_postings_score_as_asmk_defines(vocabulary: Vocabulary) -> None:
    photos = {pid: signature(pid) for pid in range(1, 13)}
    inverted = InvertedFile(vocabulary)
    for pid, agg in photos.items():
        inverted.add_aggregated(pid, agg, f"v{pid}")
    inverted._merge()
    query = photos[5]
    want = naive_scores(query, photos)
    got = merged_scores(inverted, query)
    assert got.keys() == want.keys()
    assert all(abs(got[p] - want[p]) < 1e-5 for p in want)
    assert max(got, key=got.get) == 5  # type: ignore[arg-type]


def test_scores_do_not_depend_on_how_the_postings_are_grouped(
        vocabulary: Vocabulary, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = {pid: signature(pid) for pid in range(1, 41)}
    inverted = InvertedFile(vocabulary)
    inverted.add_aggregated_many([(pid, agg, "v") for pid, agg in photos.items()])
    inverted._merge()
    assert np.diff(inverted._base.offsets).max() > 3  # some words outgrow a small buffer
    query = photos[5]
    want = naive_scores(query, photos)
    # A word at a time with a buffer smaller than a word; groups that fill the buffer
    # several times; everything at once.
    for group, chunk in ((1, 3), (7, 50), (1 << 16, 1 << 22)):
        monkeypatch.setattr(postings, "_GROUP", group)
        monkeypatch.setattr(postings, "_CHUNK", chunk)
        got = merged_scores(inverted, query)
        assert all(abs(got[p] - want[p]) < 1e-5 for p in want), (group, chunk)


def test_changes_then_a_merge_equal_building_afresh(vocabulary: Vocabulary,
                                                    tmp_path: Path) -> None:
    final = {pid: signature(100 + pid) for pid in range(40)}
    changed = InvertedFile(vocabulary)
    for pid in range(40):
        changed.add_aggregated(pid, signature(pid), "old")  # replaced below
    changed.save(tmp_path / "a.asmk", "x")
    changed.remove([3, 4, 50])  # 50 was never there
    for pid in range(40):
        if pid not in (3, 4):
            changed.add_aggregated(pid, final[pid], "new")
    changed.add_aggregated(3, final[3], "new")  # removed, then back
    changed.remove([4])
    changed.add_aggregated(4, final[4], "new")
    changed.save(tmp_path / "a.asmk", "x")
    fresh = InvertedFile(vocabulary)
    for pid, agg in final.items():
        fresh.add_aggregated(pid, agg, "new")
    fresh._merge()
    changed._merge()
    assert set(changed.versions().values()) == {"new"} and len(changed) == 40
    query = final[7]
    a, b = merged_scores(changed, query), merged_scores(fresh, query)
    assert a.keys() == b.keys() and all(abs(a[p] - b[p]) < 1e-6 for p in a)


def test_photos_waiting_beside_the_base_are_found_and_removals_hide_at_once(
        vocabulary: Vocabulary) -> None:
    inverted = InvertedFile(vocabulary)
    inverted.add_many([(pid, features_near(vocabulary, pid), "v") for pid in range(60)])
    base_size = inverted._base.size
    assert base_size > 0 and not inverted._pending
    inverted.add(500, features_near(vocabulary, 500), "v")
    assert 500 in inverted._pending and inverted._base.size == base_size  # not merged
    ids, _ = inverted.search(features_near(vocabulary, 500), 5)
    assert ids[0] == 500
    inverted.remove([500, 7])
    for seed in (500, 7):
        ids, _ = inverted.search(features_near(vocabulary, seed), 60)
        assert seed not in ids.tolist()
    assert len(inverted) == 59 and 7 not in inverted.versions()
    ids, _ = inverted.search(features_near(vocabulary, 9), 3)
    assert ids[0] == 9


def test_a_save_appends_to_the_journal_and_a_load_replays_it(vocabulary: Vocabulary,
                                                             tmp_path: Path) -> None:
    path = tmp_path / "local.asmk"
    inverted = InvertedFile(vocabulary)
    inverted.add_many([(pid, features_near(vocabulary, pid), f"v{pid}")
                       for pid in range(60)])
    inverted.save(path, "x")
    base_bytes = path.read_bytes()
    inverted.add(500, features_near(vocabulary, 500), "v500")
    inverted.add(3, features_near(vocabulary, 1003), "v3b")
    inverted.remove([8])
    journal = journal_path(path).stat().st_size
    inverted.save(path, "x")
    assert path.read_bytes() == base_bytes  # the base was not written again
    assert journal_path(path).stat().st_size > journal
    loaded = InvertedFile.load(path, "x")
    assert loaded.versions() == inverted.versions()
    assert loaded.versions()[3] == "v3b" and 8 not in loaded.versions()
    for seed in (500, 1003, 20):
        a, b = inverted.search(features_near(vocabulary, seed), 10), \
            loaded.search(features_near(vocabulary, seed), 10)
        assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1])
    # A load that replayed a clean journal extends it.
    loaded.remove([9])
    loaded.save(path, "x")
    assert path.read_bytes() == base_bytes
    assert 9 not in InvertedFile.load(path, "x").versions()


def test_a_torn_journal_record_is_not_replayed_and_the_next_save_writes_a_base(
        vocabulary: Vocabulary, tmp_path: Path) -> None:
    path = tmp_path / "local.asmk"
    inverted = saved_index(vocabulary, path)
    inverted.add(500, features_near(vocabulary, 500), "v")
    inverted.save(path, "x")
    inverted.add(501, features_near(vocabulary, 501), "v")
    inverted.save(path, "x")
    journal = journal_path(path)
    journal.write_bytes(journal.read_bytes()[:-7])  # the last record torn by a crash
    loaded = InvertedFile.load(path, "x")
    assert 500 in loaded.versions() and 501 not in loaded.versions()
    token = read_base(path).token
    loaded.add(502, features_near(vocabulary, 502), "v")
    loaded.save(path, "x")
    assert read_base(path).token != token  # appending after a torn record is never done
    again = InvertedFile.load(path, "x")
    assert {500, 502} <= again.versions().keys() and 501 not in again.versions()


def test_a_journal_grown_past_its_share_is_folded_into_a_new_base(
        vocabulary: Vocabulary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_index, "MERGE_SHARE", 1000)  # keep photos waiting
    monkeypatch.setattr(local_index, "JOURNAL_SHARE", 1000)
    path = tmp_path / "local.asmk"
    inverted = saved_index(vocabulary, path)
    token = read_base(path).token
    inverted.add(500, features_near(vocabulary, 500), "v")
    inverted.save(path, "x")
    assert read_base(path).token != token and not inverted._pending


def test_damaged_files_are_refused_and_damaged_postings_never_crash(
        vocabulary: Vocabulary, tmp_path: Path) -> None:
    path = tmp_path / "local.asmk"
    saved_index(vocabulary, path)
    with pytest.raises(IndexFileError, match="other features"):
        InvertedFile.load(path, "y")
    data = bytearray(path.read_bytes())
    layout = read_base(path).meta["layout"]
    ids_at = layout["ids"]["offset"]
    damaged = bytes(data[:ids_at]) + b"\xff" + bytes(data[ids_at + 1:])
    (tmp_path / "ids.asmk").write_bytes(damaged)
    with pytest.raises(IndexFileError, match="checksum"):
        InvertedFile.load(tmp_path / "ids.asmk", "x")
    (tmp_path / "short.asmk").write_bytes(bytes(data[:len(data) // 2]))
    with pytest.raises(IndexFileError, match="truncated"):
        InvertedFile.load(tmp_path / "short.asmk", "x")
    # Rows beyond the photos (the postings are not checksummed): wrong, never a crash.
    rows_at = layout["rows"]["offset"]
    data[rows_at:rows_at + 40] = b"\xff" * 40
    (tmp_path / "rows.asmk").write_bytes(bytes(data))
    loaded = InvertedFile.load(tmp_path / "rows.asmk", "x")
    ids, _ = loaded.search(features_near(vocabulary, 30), 5)
    assert ids[0] == 30
    loaded.add(500, features_near(vocabulary, 500), "v")
    loaded._merge()
    assert 500 in loaded.versions()


def rewrite_header(path: Path, out: Path, change: Any, version: int | None = None) -> None:
    """``path`` copied to ``out`` with its JSON header passed through ``change``."""
    data = path.read_bytes()
    old_version, head_len = struct.unpack("<II", data[4:12])
    header = change(json.loads(data[12:12 + head_len]))
    head = json.dumps(header).encode()
    start = data[:4] + struct.pack("<II", version or old_version, len(head)) + head
    out.write_bytes(start.ljust(4096, b"\0") + data[4096:])


def test_a_damaged_header_is_caught(vocabulary: Vocabulary, tmp_path: Path) -> None:
    path = tmp_path / "local.asmk"
    saved_index(vocabulary, path)

    def shorter_codes(header: dict[str, Any]) -> dict[str, Any]:
        shape = header["layout"]["codes"]["shape"]
        header["layout"]["codes"]["shape"] = [shape[0] - 1, shape[1]]  # a digit flipped
        return header

    rewrite_header(path, tmp_path / "layout.asmk", shorter_codes)
    with pytest.raises(IndexFileError, match="checksum"):
        InvertedFile.load(tmp_path / "layout.asmk", "x")
    for name, change in (
            ("junk", lambda header: [1, 2]),
            ("huge", lambda header: {**header, "layout": {
                **header["layout"], "ids": {**header["layout"]["ids"], "offset": 1e400}}}),
            ("wide", lambda header: {**header, "layout": {
                **header["layout"], "ids": {**header["layout"]["ids"],
                                            "shape": [2 ** 40, 2 ** 40]}}})):
        rewrite_header(path, tmp_path / f"{name}.asmk", change)
        with pytest.raises(IndexFileError, match=r"damaged header|truncated"):
            InvertedFile.load(tmp_path / f"{name}.asmk", "x")


def test_a_base_written_by_the_previous_format_is_still_read(
        vocabulary: Vocabulary, tmp_path: Path) -> None:
    path = tmp_path / "local.asmk"
    inverted = saved_index(vocabulary, path)
    found = read_base(path)

    def as_format_1(header: dict[str, Any]) -> dict[str, Any]:
        # Format 1's checksum covered the arrays alone.
        return {**header, "checksum": local_index_file._checksum(header, found.arrays, 1)}

    rewrite_header(path, tmp_path / "old.asmk", as_format_1, version=1)
    journal_path(path).rename(journal_path(tmp_path / "old.asmk"))
    loaded = InvertedFile.load(tmp_path / "old.asmk", "x")
    assert loaded.versions() == inverted.versions()
    rewrite_header(path, tmp_path / "wrong.asmk", lambda header: header, version=1)
    with pytest.raises(IndexFileError, match="checksum"):
        InvertedFile.load(tmp_path / "wrong.asmk", "x")


def app_and_cli(vocabulary: Vocabulary, path: Path) -> tuple[InvertedFile, InvertedFile]:
    """The app's index, saved at ``path``, and another process's (the command line's),
    opened from the files, with photo 501 added and not saved yet."""
    app = saved_index(vocabulary, path)
    cli = InvertedFile.load(path, "x")
    cli.add(501, features_near(vocabulary, 501), "cli")
    return app, cli


def test_two_processes_take_turns_and_keep_each_others_changes(
        vocabulary: Vocabulary, tmp_path: Path) -> None:
    path = tmp_path / "local.asmk"
    app, cli = app_and_cli(vocabulary, path)
    cli.add(7, features_near(vocabulary, 7), "cli")
    cli.remove([8])
    cli.save(path, "x")
    # The app changed photo 7 too, later, and saves after it: it takes in the other
    # process's record, appends its own after it, and its own change to 7 wins.
    token, base_bytes = read_base(path).token, path.read_bytes()
    app.add(500, features_near(vocabulary, 500), "app")
    app.add(7, features_near(vocabulary, 7), "app")
    app.save(path, "x")
    assert read_base(path).token == token and path.read_bytes() == base_bytes
    loaded = InvertedFile.load(path, "x")
    for index in (loaded, app):
        found = index.versions()
        assert found[500] == "app" and found[501] == "cli" and found[7] == "app"
        assert 8 not in found
    # And the other way round: the command line's next save takes in the app's record.
    cli.add(502, features_near(vocabulary, 502), "cli")
    cli.save(path, "x")
    assert read_base(path).token == token
    assert cli.versions() == InvertedFile.load(path, "x").versions()
    assert cli.versions()[7] == "app"
    # Another process learns a new vocabulary and writes its base: the app's next save
    # must not extend it with words of its own vocabulary.
    rng = np.random.default_rng(7)
    other = Vocabulary(rng.standard_normal((K, 128)).astype(np.float16).astype(np.float32))
    relearned = InvertedFile(other)
    relearned.add_many([(pid, features_near(other, pid), "v") for pid in range(60)])
    relearned.save(path, "x")
    app.add(503, features_near(vocabulary, 503), "app")
    app.save(path, "x")
    loaded = InvertedFile.load(path, "x")
    assert np.array_equal(loaded.vocabulary.centroids, vocabulary.centroids)
    assert {500, 501, 503} <= loaded.versions().keys()
    ids, _ = loaded.search(features_near(vocabulary, 503), 3)
    assert ids[0] == 503


def test_a_save_after_a_merge_here_keeps_the_other_processs_records(
        vocabulary: Vocabulary, tmp_path: Path) -> None:
    path = tmp_path / "local.asmk"
    app, cli = app_and_cli(vocabulary, path)
    cli.save(path, "x")
    # The app adds enough photos to merge them into its base in memory: its base is no
    # longer the file's, so it writes a whole base, with the other process's photo in.
    app.add_many([(pid, features_near(vocabulary, pid), "app") for pid in range(600, 620)])
    assert app._file is None
    app.save(path, "x")
    found = InvertedFile.load(path, "x").versions()
    assert found[501] == "cli" and found[615] == "app" and len(found) == 81


def test_a_failed_save_loses_neither_process_s_changes(
        vocabulary: Vocabulary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "local.asmk"
    app, cli = app_and_cli(vocabulary, path)
    # The app removes photo 5 and adds it back; its save fails (a full disk, say), and
    # the photo is then merged into its base in memory with 20 new ones.
    app.remove([5])
    app.add(5, features_near(vocabulary, 5), "again")

    def full_disk(*args: Any) -> int:
        raise IndexFileError("no space left on the device")

    monkeypatch.setattr(local_index, "append_journal", full_disk)
    with pytest.raises(IndexFileError, match="no space"):
        app.save(path, "x")
    monkeypatch.undo()
    app.add_many([(pid, features_near(vocabulary, pid), "app") for pid in range(600, 620)])
    cli.save(path, "x")  # meanwhile the other process appends its photo 501
    app.save(path, "x")
    found = InvertedFile.load(path, "x").versions()
    assert found[5] == "again" and found[501] == "cli" and found[610] == "app"


def test_a_save_waits_for_another_writer_and_gives_up_cleanly(
        vocabulary: Vocabulary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "local.asmk"
    inverted = saved_index(vocabulary, path)
    monkeypatch.setattr(local_index_file, "WRITE_WAIT_S", 0.3)
    monkeypatch.setattr(local_index_file, "READ_WAIT_S", 0.1)
    before = path.read_bytes(), journal_path(path).read_bytes()
    other = filelock.FileLock(lock_path(path), thread_local=False)  # another process
    with other:
        inverted.add(500, features_near(vocabulary, 500), "v")
        with pytest.raises(IndexFileError, match="another process"):
            inverted.save(path, "x")
        assert (path.read_bytes(), journal_path(path).read_bytes()) == before
        # A reader does not wait for ever: it reads what is there. On Windows, where an
        # open file cannot be replaced, it says the file is busy instead.
        assert len(InvertedFile.load(path, "x")) == 60
        monkeypatch.setattr(local_index_file, "MAP_FILES", False)
        with pytest.raises(IndexUnavailableError):
            InvertedFile.load(path, "x")
        monkeypatch.setattr(local_index_file, "MAP_FILES", True)
        released = threading.Timer(0.1, other.release)
        released.start()
        monkeypatch.setattr(local_index_file, "WRITE_WAIT_S", 10.0)
        inverted.save(path, "x")  # waits until the other writer is done
        released.join()
    assert 500 in InvertedFile.load(path, "x").versions()


def test_a_file_system_without_locks_is_warned_of_and_still_saved(
        vocabulary: Vocabulary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "local.asmk"
    inverted = saved_index(vocabulary, path)

    def no_flock(self: Any, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("FileSystem does not appear to support flock")

    monkeypatch.setattr(filelock.FileLock, "acquire", no_flock)
    inverted.add(500, features_near(vocabulary, 500), "v")
    inverted.save(path, "x")
    assert "has no file locks" in caplog.text
    assert 500 in InvertedFile.load(path, "x").versions()
    denied = OSError(13, "Permission denied")

    def read_only(self: Any, *args: Any, **kwargs: Any) -> None:
        raise denied

    monkeypatch.setattr(filelock.FileLock, "acquire", read_only)
    inverted.add(501, features_near(vocabulary, 501), "v")
    with pytest.raises(IndexFileError, match="cannot lock"):
        inverted.save(path, "x")


def test_a_large_merge_is_written_to_a_mapped_file_that_leaves_nothing_behind(
        vocabulary: Vocabulary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_index, "SPILL_MIN", 100)
    spill = tmp_path / "spill"
    spill.mkdir()
    in_memory, spilled = InvertedFile(vocabulary), InvertedFile(vocabulary, spill_dir=spill)
    photos = [(pid, features_near(vocabulary, pid), "v") for pid in range(60)]
    in_memory.add_many(photos)
    spilled.add_many(photos)
    if local_index.MAP_FILES:
        assert isinstance(spilled._base.rows, np.memmap)
    assert list(spill.iterdir()) == []
    for seed in (4, 44):
        a, b = in_memory.search(features_near(vocabulary, seed), 10), \
            spilled.search(features_near(vocabulary, seed), 10)
        assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1])
