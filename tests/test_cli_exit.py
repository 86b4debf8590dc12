"""How the command's process ends: a reader that stops reading ends it quietly (an error
only where work was left undone), output lost otherwise is an error, and ``main`` called
in-process leaves the caller's streams alone."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import imagesearch.cli.main as cli_main
from imagesearch.cli.exiting import reader_gone


def _buffered() -> dict[str, str]:
    """This environment with Python's output buffered, as a user's shell has it."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def _reader_leaves(command: list[str], lines: int, wait: bool = False) -> tuple[int, bytes]:
    """Run the console command with its work replaced by printing ``lines`` lines, and
    close the pipe after reading one (``wait``: the lines fit in the buffer, and the pipe
    closes before the command ends). Returns (exit code, stderr)."""
    script = ("import sys\nimport imagesearch.cli.main as m\n"
              "def work(args, cancel):\n"
              f"    sys.stdout.write('hit\\n' * {lines})\n"
              + ("    sys.stdin.read()\n" if wait else "") +
              "    return 0\n"
              "m._run_command = work\nm.entry()\n")
    proc = subprocess.Popen([sys.executable, "-c", script, *command], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_buffered())
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    if not wait:
        proc.stdout.readline()
    proc.stdout.close()
    proc.stdin.close()  # (wait: now the command ends, flushing into the closed pipe)
    code = proc.wait(timeout=120)
    err = proc.stderr.read()
    proc.stderr.close()
    return code, err


@pytest.mark.skipif(os.name == "nt", reason="POSIX pipes")
@pytest.mark.parametrize("wait", [False, True], ids=["while printing", "at the end"])
def test_a_reader_that_stops_reading_ends_the_command_quietly(wait: bool) -> None:
    assert _reader_leaves(["search", "cat"], 200_000 if not wait else 100, wait) == (0, b"")
    assert _reader_leaves(["status"], 200_000 if not wait else 100, wait) == (0, b"")
    # Indexing stopped short of its work: an error, still without a traceback.
    assert _reader_leaves(["index"], 200_000 if not wait else 100, wait) == (1, b"")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_output_lost_to_a_full_disk_is_an_error() -> None:
    with open("/dev/full", "w") as full_disk:
        done = subprocess.run(
            [sys.executable, "-c", "import sys\nfrom imagesearch.cli.exiting import leave_now\n"
             "sys.stdout.write('hits')\nleave_now(0)"],
            stdout=full_disk, stderr=subprocess.PIPE, text=True, timeout=60, env=_buffered())
    assert done.returncode == 1 and "cannot write the output" in done.stderr


def test_a_process_without_a_console_leaves_with_its_code() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom imagesearch.cli.exiting import leave_now\n"
         "sys.stdout = None\nleave_now(3)"],
        capture_output=True, text=True, timeout=60, env=_buffered())
    assert done.returncode == 3 and not done.stderr


def test_main_in_process_leaves_the_callers_streams_alone(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(*_: object) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(cli_main, "_run_command", broken)
    with pytest.raises(BrokenPipeError):  # the embedding program's to handle
        cli_main.main(["--library", str(tmp_path), "status"])


def test_what_counts_as_a_reader_gone() -> None:
    assert reader_gone(BrokenPipeError(errno.EPIPE, "Broken pipe"))
    assert not reader_gone(OSError(errno.ENOSPC, "No space left on device"))
    # Windows says EINVAL for a closed pipe; elsewhere EINVAL is a real error.
    assert reader_gone(OSError(errno.EINVAL, "Invalid argument")) == (os.name == "nt")
