"""The class table: value, name, colour and which class is background.

It holds no state of its own beyond the rows; :meth:`ClassTable.class_map` turns them into the
core :class:`~scribbleseg.core.annotations.ClassMap`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from scribbleseg.core.annotations import ClassMap

__all__ = ["ClassTable"]

ColourOf = Callable[[int], Sequence[float] | None]
_VALUE, _NAME, _COLOUR, _BACKGROUND = range(4)


class ClassTable(QWidget):
    """Editable table of classes.

    Parameters
    ----------
    colour_of : callable, optional
        Class value -> RGBA in ``[0, 1]`` (e.g. the scribbles layer's ``get_color``).

    Attributes
    ----------
    table : QTableWidget
        Columns value, name (editable), colour, background (check box; at most one is checked).
    add_button, remove_button : QPushButton
    class_selected : Signal(int)
        Emitted with the value of the row the user selects (to paint that class).
    """

    class_selected = Signal(int)

    def __init__(self, colour_of: ColourOf | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._colour_of = colour_of
        self.table = QTableWidget(0, 4, self)
        self.table.setHorizontalHeaderLabels(["value", "name", "colour", "background"])
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(_NAME, QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        # Room for four rows without scrolling; more scroll.
        height = (
            self.table.horizontalHeader().sizeHint().height()
            + 4 * self.table.verticalHeader().defaultSectionSize()
        )
        self.table.setMinimumHeight(height + 6)
        self.table.setMaximumHeight(height + 6)
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.add_button = QPushButton("Add class")
        self.add_button.setToolTip("add a class with the next free value")
        self.add_button.clicked.connect(lambda: self.add_class())
        self.remove_button = QPushButton("Remove class")
        self.remove_button.setToolTip("remove the selected class from the table (its strokes stay)")
        self.remove_button.clicked.connect(self._remove_selected)
        buttons = QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addLayout(buttons)

    # ------------------------------------------------------------------ reading
    def values(self) -> tuple[int, ...]:
        """Class values, in table order (sorted)."""
        return tuple(int(self.table.item(row, _VALUE).text()) for row in range(self.table.rowCount()))

    def names(self) -> tuple[str, ...]:
        """Class names, in table order."""
        return tuple(self.table.item(row, _NAME).text().strip() for row in range(self.table.rowCount()))

    def background(self) -> int | None:
        """Return the background class value, or None."""
        for row, value in enumerate(self.values()):
            if self._check_box(row).isChecked():
                return value
        return None

    def class_map(self) -> ClassMap:
        """Return the classes as a core :class:`ClassMap` (AnnotationError when empty)."""
        names = [name or f"class {value}" for value, name in zip(self.values(), self.names(), strict=True)]
        return ClassMap.from_values(self.values(), names=names, background=self.background())

    def selected_value(self) -> int | None:
        """Value of the selected row, or None."""
        rows = {index.row() for index in self.table.selectionModel().selectedRows()}
        return self.values()[rows.pop()] if rows else None

    # ------------------------------------------------------------------ writing
    def set_classes(
        self, values: Iterable[int], names: Mapping[int, str] | None = None, background: int | None = None
    ) -> None:
        """Replace the rows."""
        self.table.setRowCount(0)
        for value in sorted({int(v) for v in values}):
            self.add_class(value, (names or {}).get(value))
        self.set_background(background)

    def add_class(self, value: int | None = None, name: str | None = None) -> int:
        """Add a row (default: the next free value) and return its value; an existing value is kept."""
        values = self.values()
        if value is None:
            value = max(values, default=0) + 1
        value = int(value)
        if value < 1:
            raise ValueError(f"class values must be >= 1 (0 means unlabelled), got {value}")
        if value in values:
            return value
        row = sum(v < value for v in values)
        self.table.insertRow(row)
        value_item = QTableWidgetItem(str(value))
        value_item.setFlags(value_item.flags() & ~Qt.ItemFlag.ItemIsEditable)
        self.table.setItem(row, _VALUE, value_item)
        self.table.setItem(row, _NAME, QTableWidgetItem(name or f"class {value}"))
        colour_item = QTableWidgetItem("")
        colour_item.setFlags(colour_item.flags() & ~Qt.ItemFlag.ItemIsEditable)
        self.table.setItem(row, _COLOUR, colour_item)
        check = QCheckBox()
        check.setToolTip("the background class is written as 0 on export")
        check.toggled.connect(lambda checked, box=check: self._exclusive(box, checked))
        self.table.setCellWidget(row, _BACKGROUND, check)
        self._paint_colour(row, value)
        return value

    def merge_values(self, values: Iterable[int]) -> list[int]:
        """Add rows for values not in the table yet; return those values."""
        added = [int(v) for v in sorted(set(values) - set(self.values())) if int(v) >= 1]
        for value in added:
            self.add_class(value)
        return added

    def remove_class(self, value: int) -> None:
        """Remove the row of ``value`` (if present)."""
        values = self.values()
        if value in values:
            self.table.removeRow(values.index(value))

    def set_background(self, value: int | None) -> None:
        """Mark ``value`` as background (None: no background class)."""
        for row, row_value in enumerate(self.values()):
            self._check_box(row).setChecked(row_value == value)

    def select_value(self, value: int) -> None:
        """Select the row of ``value``."""
        values = self.values()
        if value in values:
            self.table.selectRow(values.index(value))

    def set_colour_source(self, colour_of: ColourOf | None) -> None:
        """Take colours from another source (e.g. a newly chosen scribbles layer)."""
        self._colour_of = colour_of
        self.refresh_colours()

    def refresh_colours(self) -> None:
        """Repaint the colour column."""
        for row, value in enumerate(self.values()):
            self._paint_colour(row, value)

    # ------------------------------------------------------------------ internals
    def _check_box(self, row: int) -> QCheckBox:
        widget = self.table.cellWidget(row, _BACKGROUND)
        assert isinstance(widget, QCheckBox)
        return widget

    def _exclusive(self, box: QCheckBox, checked: bool) -> None:
        if not checked:
            return
        for row in range(self.table.rowCount()):
            other = self._check_box(row)
            if other is not box and other.isChecked():
                other.setChecked(False)

    def _paint_colour(self, row: int, value: int) -> None:
        item = self.table.item(row, _COLOUR)
        rgba = self._colour_of(value) if self._colour_of is not None else None
        if item is None or rgba is None:
            return
        item.setBackground(QColor.fromRgbF(*(float(c) for c in list(rgba)[:3]), 1.0))

    def _on_selection(self) -> None:
        value = self.selected_value()
        if value is not None:
            self.class_selected.emit(value)

    def _remove_selected(self) -> None:
        value = self.selected_value()
        if value is not None:
            self.remove_class(value)
