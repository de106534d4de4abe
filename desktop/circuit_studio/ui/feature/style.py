"""The feature dashboard's colours and number formats."""

from __future__ import annotations

import numpy as np
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QWidget

ACT_COLOR = QColor(255, 127, 14)  # the top of the shading ramp (white -> orange), the histogram's bars
LINE_COLOR = QColor(31, 119, 180)  # this prompt's activation on the histogram


def fmt(x: float) -> str:
    """A short number: 3 significant digits, no exponent for everyday magnitudes."""
    x = float(x)
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.3g}"


def fixed(x: float, scale: float) -> str:
    """`x` with as many decimals as three significant digits of `scale` need (aligned columns)."""
    scale = abs(float(scale))
    digits = 2 if scale <= 0 else int(min(6, max(0, 2 - np.floor(np.log10(scale)))))
    return f"{float(x):.{digits}f}"


def shade(t: float, base: QColor) -> QColor:
    """`base` blended towards the activation colour by t in [0, 1]."""
    t = min(max(float(t), 0.0), 1.0)
    return QColor(round(base.red() + (ACT_COLOR.red() - base.red()) * t),
                  round(base.green() + (ACT_COLOR.green() - base.green()) * t),
                  round(base.blue() + (ACT_COLOR.blue() - base.blue()) * t))


def luminance(c: QColor) -> float:
    return 0.299 * c.red() + 0.587 * c.green() + 0.114 * c.blue()


def muted(widget: QWidget) -> str:
    """The palette's greyed text colour, as a name for style sheets and rich text."""
    return widget.palette().color(QPalette.PlaceholderText).name()
