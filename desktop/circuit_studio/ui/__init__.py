"""The desktop window (PySide6 + pyqtgraph). It presents `core` objects and delegates work to them."""
