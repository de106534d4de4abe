"""The intervention pane's rows: one `RowView` per `core.interventions.steering.SteeringRow` (name, position mode, a slider
from "ablate" (0) to the row's top, a box for the multiple or the activation with a toggle between the two,
what it does, remove). A view: it shows the row it is given and turns the
user's actions into signals; the pane calls the steering model with them."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import (QComboBox, QFrame, QGridLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSizePolicy,
                               QSlider, QToolButton)

from ..core.interventions.steering import SteeringRow, fmt_multiple

KEY_STEPS = {Qt.Key.Key_Up: 0.1, Qt.Key.Key_Down: -0.1, Qt.Key.Key_PageUp: 1.0, Qt.Key.Key_PageDown: -1.0}


class ElidedLabel(QLabel):
    """A one-line label that elides its text to whatever width it gets."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self._full = text
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(40)
        self.setText(text)

    def full_text(self) -> str:
        return self._full

    def set_full_text(self, text: str) -> None:
        self._full = text
        self._elide()

    def _elide(self) -> None:
        self.setText(self.fontMetrics().elidedText(self._full, Qt.TextElideMode.ElideRight, max(self.width() - 2, 10)))

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._elide()


class RowView(QObject):
    """The widgets of one row. Signals carry what the user asked for; `show_row` shows a (new) row state."""

    slider_moved = Signal(float)  # the slider's multiple
    text_entered = Signal(str)  # the box's text (Enter, or leaving the box)
    step_requested = Signal(float)  # ↑/↓/PgUp/PgDn in the box: add this to the multiple
    mode_chosen = Signal(str)  # "token" | "all"
    entry_chosen = Signal(str)  # "multiple" | "value": how the box reads and shows the row
    remove_requested = Signal()

    def __init__(self, row: SteeringRow, tip: str) -> None:
        super().__init__()
        self.row = row
        self.widget = QFrame()
        self.widget.setObjectName("interventionRow")
        self.widget.setStyleSheet("QFrame#interventionRow { border-bottom: 1px solid #d8d8d8; }")
        self.name_label = ElidedLabel(row.name)
        self.name_label.setToolTip(tip)
        fm = QFontMetrics(self.name_label.font())
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(round(row.low / row.step), round(row.high / row.step))
        self.slider.setMinimumWidth(70)
        self.slider.setToolTip(f"Multiple of the activation: left end 0 = ablate … {fmt_multiple(row.high)}×; "
                               "1 leaves it unchanged. Type a negative multiple in the box to flip it.")
        small = "color: #777; font-size: 11px;"
        self.low_label = QLabel("ablate")
        self.low_label.setStyleSheet(small)
        self.low_label.setToolTip("The slider's left end sets the feature to 0")
        self.high_label = QLabel(f"{fmt_multiple(row.high)}×")
        self.high_label.setStyleSheet(small)
        self.box = QLineEdit()
        self.box.setFixedWidth(fm.horizontalAdvance("-0000.00") + 14)
        self.box.setAlignment(Qt.AlignmentFlag.AlignRight)
        self.box.setToolTip(f"A multiple (x1.5 or 1.5×, {fmt_multiple(row.typed_low)} … {fmt_multiple(row.high)}) "
                            "or, in = mode or typed as =3.44, the activation itself; Enter applies, ↑/↓ step by 0.1, "
                            "PgUp/PgDn by 1")
        self.entry_button = QToolButton()
        self.entry_button.setCheckable(True)
        self.entry_button.setFixedWidth(fm.horizontalAdvance("=") + 14)
        self.entry_button.setEnabled(row.value_base is not None)
        self.entry_button.setToolTip("× : type a multiple of the activation · = : type the activation itself"
                                     if row.value_base is not None else
                                     "Several features: set by a multiple of each one's activation")
        self.entry_button.toggled.connect(lambda on: self.entry_chosen.emit("value" if on else "multiple"))
        self.value_label = QLabel()
        self.value_label.setFixedWidth(fm.horizontalAdvance("unchanged") + 4)
        self.value_label.setStyleSheet("color: #666;")
        self.position = QComboBox()
        self.position.addItem("this token" if len({t.position for t in row.targets}) == 1 else "their tokens", "token")
        self.position.addItem("all positions", "all")
        self.position.setToolTip("This token: set the feature at its own position.\nAll positions: set it to the same "
                                 "value at every position from the first real token on, generated tokens included.")
        self.remove_button = QPushButton("✕")
        self.remove_button.setFixedWidth(fm.horizontalAdvance("✕") + 16)
        self.remove_button.setToolTip("Remove this intervention")
        grid = QGridLayout(self.widget)  # name, position, remove / slider, multiple, value: fits a narrow dock
        grid.setContentsMargins(2, 1, 2, 2)
        grid.setHorizontalSpacing(4)
        grid.setVerticalSpacing(0)
        grid.addWidget(self.name_label, 0, 0, 1, 2)
        grid.addWidget(self.position, 0, 2)
        grid.addWidget(self.remove_button, 0, 3)
        track = QHBoxLayout()
        track.setSpacing(3)
        track.addWidget(self.low_label)
        track.addWidget(self.slider, 1)
        track.addWidget(self.high_label)
        grid.addLayout(track, 1, 0)
        boxes = QHBoxLayout()
        boxes.setSpacing(2)
        boxes.addWidget(self.entry_button)
        boxes.addWidget(self.box)
        grid.addLayout(boxes, 1, 1)
        grid.addWidget(self.value_label, 1, 2, 1, 2)
        grid.setColumnStretch(0, 1)
        self.slider.valueChanged.connect(lambda v: self.slider_moved.emit(round(v * self.row.step, 6)))
        self.position.currentIndexChanged.connect(lambda i: self.mode_chosen.emit(self.position.itemData(i)))
        self.remove_button.clicked.connect(self.remove_requested)
        self.box.editingFinished.connect(lambda: self.text_entered.emit(self.box.text()))
        self.box.installEventFilter(self)
        self.show_row(row)

    def show_row(self, row: SteeringRow) -> None:
        """Show `row` (the same key, a new multiple, mode or name), emitting nothing."""
        self.row = row
        if self.name_label.full_text() != row.name:
            self.name_label.set_full_text(row.name)
        self.slider.blockSignals(True)
        self.slider.setValue(round(row.multiple / row.step))
        self.slider.blockSignals(False)
        by_value = row.entry == "value" and row.value is not None
        self.entry_button.blockSignals(True)
        self.entry_button.setChecked(by_value)
        self.entry_button.setText("=" if by_value else "×")
        self.entry_button.blockSignals(False)
        self.box.setText(f"{row.value:.4g}" if by_value else fmt_multiple(row.multiple))
        self.position.blockSignals(True)
        self.position.setCurrentIndex(0 if row.mode == "token" else 1)
        self.position.blockSignals(False)
        self.value_label.setText(row.value_text())

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
        if obj is self.box and event.type() == QEvent.Type.KeyPress and event.key() in KEY_STEPS:
            self.step_requested.emit(KEY_STEPS[event.key()])
            return True
        return super().eventFilter(obj, event)

    # what tests and scripts read of a row
    key = property(lambda self: self.row.key)
    name = property(lambda self: self.row.name)
    targets = property(lambda self: self.row.targets)
    detail = property(lambda self: self.row.detail)
    multiple = property(lambda self: self.row.multiple)
    mode = property(lambda self: self.row.mode)
    entry = property(lambda self: self.row.entry)
    value = property(lambda self: self.row.value)
    low = property(lambda self: self.row.low)
    typed_low = property(lambda self: self.row.typed_low)
    high = property(lambda self: self.row.high)
    step = property(lambda self: self.row.step)
    is_relative = property(lambda self: self.row.is_relative)
