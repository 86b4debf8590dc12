"""How the `imagesearch` command's process ends: at once after a search, and quietly when
whoever read its output has stopped reading (`imagesearch search cat -k 500 | head -3`).

Only for the command's own process as it ends: ``cli.main.main`` called by tests or an
embedding program returns and leaves its streams alone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from typing import NoReturn

EXIT_ERROR = 1


def reader_gone(exc: BaseException) -> bool:
    """A write failed because nothing reads the output any more: how a pipe ends."""
    if isinstance(exc, BrokenPipeError):
        return True
    # Windows reports a write to a closed pipe as EINVAL (python/cpython#79935).
    return os.name == "nt" and isinstance(exc, OSError) and exc.errno == errno.EINVAL


def discard_stdout() -> None:
    """Send what is still buffered for standard output nowhere, so the interpreter's own
    flush at exit does not fail again on the closed pipe."""
    stream = sys.stdout
    if stream is not sys.__stdout__:
        return  # replaced by the program: not this process's descriptor to change
    if stream is None:
        return
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def flush_output(code: int, gone_code: int) -> int:
    """Flush standard output as the process ends; returns the exit code to end with.

    Args:
        code: the command's own exit code.
        gone_code: the code when the output's reader has gone (0 for a command that
            only prints; an error where work was left undone).

    Output that cannot be written for another reason (a full disk) is an error, said in
    one line, as Python's own exit makes it one.
    """
    try:
        if sys.stdout is not None:  # None: no console (a windowed build)
            sys.stdout.flush()
    except ValueError:
        pass  # closed by the program
    except OSError as exc:
        discard_stdout()
        if reader_gone(exc):
            return gone_code
        with contextlib.suppress(OSError, ValueError, AttributeError):
            print(f"imagesearch: error: cannot write the output: {exc.strerror or exc}",
                  file=sys.stderr)
        return code or EXIT_ERROR
    return code


def leave_now(code: int, gone_code: int = 0) -> NoReturn:
    """End the process without tearing the interpreter down.

    For a search that has printed its hits and closed the catalog, with nothing left to
    write: freeing the modules and objects it loaded (the ONNX Runtime session, FAISS,
    SQLAlchemy when the library was opened in full) would only keep the shell waiting,
    0.1-0.3 s on 2 cores (README, "Using the CLI").
    """
    logging.shutdown()
    code = flush_output(code, gone_code)
    if sys.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
    os._exit(code)
