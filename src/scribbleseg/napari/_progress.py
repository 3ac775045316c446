"""Train / Stop / corrections buttons, the progress line and a small live loss plot."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPaintEvent, QPen, QPolygonF
from qtpy.QtWidgets import QGridLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from scribbleseg.napari._model import LossHistory

if TYPE_CHECKING:
    from scribbleseg.core.engine import TrainUpdate

__all__ = ["LossPlot", "TrainingPanel"]


class LossPlot(QWidget):
    """A sparkline of the loss, drawn with QPainter (cheap: no plotting library).

    Parameters
    ----------
    history : LossHistory
        The points to draw; call :meth:`update` after adding some.
    """

    def __init__(self, history: LossHistory, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.history = history
        self.setMinimumHeight(56)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("training loss per step")

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        area = QRectF(self.rect()).adjusted(2, 12, -2, -2)
        painter.setPen(QPen(QColor(128, 128, 128, 160), 1))
        painter.drawRect(area)
        losses = self.history.losses
        if len(losses) >= 2:
            low, high = min(losses), max(losses)
            span = (high - low) or 1.0
            step = area.width() / (len(losses) - 1)
            line = QPolygonF(
                [
                    QPointF(area.left() + i * step, area.bottom() - (value - low) / span * area.height())
                    for i, value in enumerate(losses)
                ]
            )
            painter.setPen(QPen(QColor(255, 170, 0), 1.5))
            painter.drawPolyline(line)
            painter.setPen(QColor(200, 200, 200))
            painter.drawText(
                QRectF(self.rect()).adjusted(2, 0, -2, 0),
                Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft,
                f"loss {losses[-1]:.3f}   (range {low:.3f} - {high:.3f})",
            )
        painter.end()


class TrainingPanel(QWidget):
    """The training controls and progress.

    Attributes
    ----------
    train_button, stop_button, corrections_button : QPushButton
    status : QLabel
        Step, loss, labelled voxels and speed of the last update.
    loss_plot : LossPlot
    history : LossHistory
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("train on the scribbles; keep painting while it trains")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.corrections_button = QPushButton("Use corrections as scribbles")
        self.corrections_button.setToolTip(
            "voxels you changed in the prediction layer become scribbles of that class "
            "(existing scribbles are kept); training goes on with them"
        )
        self.status = QLabel("not trained yet")
        self.status.setWordWrap(True)
        self.history = LossHistory()
        self._first_step: int | None = None
        self._preview_source = "network"
        self.loss_plot = LossPlot(self.history)
        buttons = QGridLayout()
        buttons.addWidget(self.train_button, 0, 0)
        buttons.addWidget(self.stop_button, 0, 1)
        buttons.addWidget(self.corrections_button, 1, 0, 1, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.loss_plot)

    def set_running(self, running: bool) -> None:
        """Enable Stop while training runs, Train otherwise."""
        self.train_button.setEnabled(not running)
        self.stop_button.setEnabled(running)

    def start_run(self) -> None:
        """Begin a run: the speed is counted from its first step."""
        self._first_step = None
        self._preview_source = "network"
        self.show_message("starting…")

    def show_update(self, update: TrainUpdate) -> None:
        """Show one training record."""
        self.history.add(update.step, update.loss)
        if self._first_step is None:
            self._first_step = update.step - 1
        steps = update.step - self._first_step
        speed = steps / update.elapsed if update.elapsed > 0 else 0.0
        state = {"stopped": "stopped", "steps": "done", "time": "time is up"}.get(update.reason or "", "")
        suffix = f" - {state}" if update.done and state else ""
        if update.preview is not None:
            self._preview_source = update.preview.source
        if self._preview_source == "features" and not update.done:
            # The first previews come from a random forest on filter features (core/pixel_classifier).
            suffix += "   preview: instant feature classifier"
        self.status.setText(
            f"step {update.step}   loss {update.loss:.4f}   {update.labelled_voxels:,} labelled voxels"
            + (f"   {speed:.1f} steps/s" if not update.done else "")
            + suffix
        )
        self.loss_plot.update()

    def show_finished(self, update: TrainUpdate) -> None:
        """Show that the run has ended, after ``update`` (its last record)."""
        self.status.setText(
            f"step {update.step}   loss {update.loss:.4f}   {update.labelled_voxels:,} labelled voxels"
            " - stopped"
        )

    def show_message(self, text: str) -> None:
        """Show a line of status text."""
        self.status.setText(text)
