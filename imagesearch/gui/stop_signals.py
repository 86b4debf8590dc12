"""Closing the window when the system asks the process to stop (SIGTERM, SIGINT).

A logout, a service manager or `kill` sends SIGTERM; Ctrl+C in the terminal that started
the app sends SIGINT. Either would otherwise end the process where it stands, or (SIGINT)
not until Python next runs, which inside Qt's event loop may be never. Both now close the
window as Quit does: work is cancelled, the index saved, the window state written.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from types import FrameType

from PySide6.QtCore import QObject, QSocketNotifier

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals(QObject):
    """Turns the stop signals into one call of ``on_stop`` on the GUI thread."""

    def __init__(self, on_stop: Callable[[], object], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._on_stop: Callable[[], object] | None = on_stop
        # Python's C-level handler writes the signal number to this socket at once; the
        # notifier wakes Qt's loop, which Python's own handler alone could not do.
        self._read, self._write = socket.socketpair()
        for end in (self._read, self._write):
            end.setblocking(False)
        self._notifier = QSocketNotifier(self._read.fileno(), QSocketNotifier.Type.Read, self)
        self._notifier.activated.connect(self._woken)
        self._previous_fd = signal.set_wakeup_fd(self._write.fileno(),
                                                 warn_on_full_buffer=False)
        self._previous = {s: signal.signal(s, _note) for s in _SIGNALS}

    def _woken(self) -> None:
        try:
            self._read.recv(64)
        except OSError:
            return
        callback, self._on_stop = self._on_stop, None  # a second signal changes nothing
        if callback is not None:
            callback()

    def restore(self) -> None:
        """Put back the handlers that were there before (the tests start the app often)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._notifier.setEnabled(False)
        self._read.close()
        self._write.close()


def _note(_sig: int, _frame: FrameType | None) -> None:
    """Nothing to do here: the wakeup socket has already told the event loop."""
