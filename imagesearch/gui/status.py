"""The status bar: photos indexed, model, device and when the library was last indexed."""

from __future__ import annotations

from datetime import datetime

from PySide6.QtCore import QLocale, QSize, Qt
from PySide6.QtGui import QPainter, QPaintEvent
from PySide6.QtWidgets import QLabel, QStatusBar, QWidget

from imagesearch.domain import LibraryStatus


def when(moment: datetime | None, now: datetime | None = None) -> str:
    """'never', 'today 14:05', 'yesterday 09:12' or '2024-03-02 14:05', in local time.

    ``moment`` is aware (the catalog's times are UTC); ``now`` is local.
    """
    if moment is None:
        return "never"
    moment = moment.astimezone().replace(tzinfo=None)
    now = now or datetime.now()
    days = (now.date() - moment.date()).days
    if days == 0:
        return f"today {moment:%H:%M}"
    if days == 1:
        return f"yesterday {moment:%H:%M}"
    return f"{moment:%Y-%m-%d %H:%M}"


class ElidedLabel(QLabel):
    """A label that may shrink below its text, eliding it, so it never sets a window minimum."""

    def minimumSizeHint(self) -> QSize:
        return QSize(min(40, super().minimumSizeHint().width()), super().minimumSizeHint().height())

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        text = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight,
                                             self.contentsRect().width())
        painter.drawText(self.contentsRect(), int(self.alignment()), text)
        painter.end()


class StatusBar(QStatusBar):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.busy = QLabel(self)
        self.photos = ElidedLabel(self)
        self.model = ElidedLabel(self)
        self.device = ElidedLabel(self)
        self.last = ElidedLabel(self)
        for label in (self.busy, self.photos, self.model, self.device, self.last):
            self.addPermanentWidget(label)
        self.busy.hide()

    def set_status(self, status: LibraryStatus) -> None:
        pending = f", {status.pending_count} waiting" if status.pending_count else ""
        failed = f", {status.failed_count} failed" if status.failed_count else ""
        self.photos.setText(f"{count_text(status.indexed_count)} photos indexed{pending}{failed}")
        self.photos.setToolTip((f"Search index: {status.search_index}" if status.search_index
                                else "No search index yet") + f"\nStorage: {status.storage}")
        self.model.setText(f"Model: {status.model_id}")
        self.device.setText(f"Device: {status.device}")
        # The runtime probe's choice and its figures (speed, cosine and top-10 agreement
        # with fp32), so the decision can be checked, not taken on trust.
        self.device.setToolTip(f"Model runs as {status.runtime}" if status.runtime else
                               "The model's runtime is measured the first time it loads")
        self.last.setText(f"Last indexed: {when(status.last_indexed)}")

    def set_busy(self, busy: bool) -> None:
        self.busy.setText("Searching…")
        self.busy.setVisible(busy)

    def set_refining(self, refining: bool) -> None:
        """The re-rank stage is checking the first results for the query's object."""
        if refining:
            self.busy.setText("Refining: matching details…")
            self.busy.setToolTip("The best results are being checked for the very object "
                                 "in your image; they are reordered and boxed when done.")
        self.busy.setVisible(refining)


def count_text(n: int) -> str:
    """A count with the user's digit grouping ("1,000,000"); grouped in the C locale too."""
    locale = QLocale()
    locale.setNumberOptions(QLocale.NumberOption.DefaultNumberOptions)
    return locale.toString(n)
