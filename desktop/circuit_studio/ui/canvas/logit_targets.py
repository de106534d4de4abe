"""Custom attribution targets from the canvas: right-click a logit node for

* "Explain logit(A) − logit(B)…": B one of the graph's other logits or a typed token; traces the same
  prompt with the one target `core.attribution.targets.LogitDiff(A, B)` (its node is labelled "logit(A) - logit(B)");
* "Trace these tokens…": tokens checked among the graph's logits or typed; traces the prompt with them as
  the targets, in that order.

The new graph joins the session like any trace (the controller's trace job with `targets`). The dialogs are
`ask_other_token` and `ask_tokens` (tests replace them); `explain_difference` and `trace_tokens` do the work.
"""

from __future__ import annotations

import ast

from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QInputDialog, QLabel, QLineEdit, QListWidget, QListWidgetItem,
                               QMenu, QVBoxLayout, QWidget)

from ...core.graph.attribution_graph import NodeKind
from ...core.attribution.targets import LogitDiff

TYPE_HINT = "Quote a token to keep its leading space: ' Paris'"


def shown(token: str) -> str:
    """A token as a menu item shows it: quoted, so that a leading space is seen."""
    return repr(token)


def typed_token(text: str) -> str:
    """What the user typed as one token: a quoted string literal unquoted, else the text as it is."""
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        try:
            value = ast.literal_eval(t)
            if isinstance(value, str):
                return value
        except (ValueError, SyntaxError):
            pass
    return text


def typed_tokens(text: str) -> list[str]:
    """Several typed tokens, separated by commas (quoted ones may hold commas)."""
    out, cur, quote = [], "", ""
    for ch in text:
        if quote:
            cur += ch
            if ch == quote:
                quote = ""
        elif ch in "'\"" and not cur.strip():
            cur, quote = ch, ch
        elif ch == ",":
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [typed_token(t) if t.strip()[:1] in "'\"" else t.strip() for t in out if t.strip()]


def explain_difference(controller, node: int, other: str | int):
    """Trace the current graph's prompt with the target logit(A) − logit(B): A the token of logit node `node`,
    B `other` (one of the graph's logit labels, a token string or a token id). The trace job's handle, or None."""
    a = controller.analysis
    g = a.graph
    k = int(node) - g.logit_offset
    tok_a = int(g.logit_token_ids[k])
    if isinstance(other, str) and other in g.logit_tokens:
        other = int(g.logit_token_ids[g.logit_tokens.index(other)])
    label_b = other if isinstance(other, str) else controller.bundle.tokenizer.decode([int(other)])
    return controller.trace(g.prompt, targets=[LogitDiff(tok_a, other)],
                            title=f"{g.prompt} — logit({g.logit_tokens[k]}) - logit({label_b})")


def trace_tokens(controller, tokens: list[str | int]):
    """Trace the current graph's prompt with `tokens` (logit labels of the graph, token strings or ids) as the
    targets."""
    g = controller.analysis.graph
    targets = [int(g.logit_token_ids[g.logit_tokens.index(t)]) if isinstance(t, str) and t in g.logit_tokens
               else t for t in tokens]
    names = ", ".join(repr(t) if isinstance(t, str) else str(t) for t in tokens)
    return controller.trace(g.prompt, targets=targets, title=f"{g.prompt} — targets {names}")


# ---------------------------------------------------------------- dialogs (tests replace these)
def ask_other_token(parent: QWidget, a: str, choices: list[str]) -> str | None:
    """B for logit(A) − logit(B): one of `choices` (the other logits) or a typed token; None if cancelled."""
    items = [shown(c) for c in choices]
    text, ok = QInputDialog.getItem(parent, "Explain a logit difference",
                                    f"Explain logit({shown(a)}) − logit(B). B: one of the other logits, or type a "
                                    f"token ({TYPE_HINT}).", items, 0, True)
    if not ok or not text.strip():
        return None
    return choices[items.index(text)] if text in items else typed_token(text)


class TokensDialog(QDialog):
    """Check tokens among the graph's logits and type others; `tokens()` in the order shown, typed ones last."""

    def __init__(self, parent: QWidget | None, logits: list[str], checked: str) -> None:
        super().__init__(parent)
        self.setWindowTitle("Trace these tokens")
        self.list = QListWidget()
        for t in logits:
            it = QListWidgetItem(shown(t))
            it.setData(Qt.ItemDataRole.UserRole, t)
            it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            it.setCheckState(Qt.CheckState.Checked if t == checked else Qt.CheckState.Unchecked)
            self.list.addItem(it)
        self.extra = QLineEdit()
        self.extra.setPlaceholderText("more tokens, separated by commas: ' Paris', ' Rome'")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Attribute from these logits (the new graph's targets):"))
        lay.addWidget(self.list)
        lay.addWidget(QLabel(f"Other tokens ({TYPE_HINT}):"))
        lay.addWidget(self.extra)
        lay.addWidget(buttons)

    def tokens(self) -> list[str]:
        out = [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())
               if self.list.item(i).checkState() == Qt.CheckState.Checked]
        return out + typed_tokens(self.extra.text())


def ask_tokens(parent: QWidget, logits: list[str], checked: str) -> list[str] | None:
    d = TokensDialog(parent, logits, checked)
    return d.tokens() if d.exec() == QDialog.DialogCode.Accepted else None


# ---------------------------------------------------------------- the menu
class LogitTargetsMenu:
    """Builds and runs the canvas's right-click menu of a logit node; reports refusals through `say`."""

    def __init__(self, controller, parent: QWidget, say=None) -> None:
        self.controller = controller
        self.parent = parent
        self.say = say or (lambda text: None)

    def menu_for(self, node: int) -> QMenu | None:
        """The menu of `node` (None when it is not a logit node)."""
        a = self.controller.analysis
        if a is None or a.graph.kind_of(node) is not NodeKind.LOGIT:
            return None
        g = a.graph
        k = node - g.logit_offset
        menu = QMenu(self.parent)
        diff = menu.addAction(f"Explain logit({shown(g.logit_tokens[k])}) − logit(B)…", lambda: self.explain(node))
        tokens = menu.addAction("Trace these tokens…", lambda: self.tokens(node))
        ready = self.controller.bundle is not None and self.controller.transcoders is not None
        custom = g.logit_tokens[k].startswith("logit(")
        diff.setEnabled(ready and not custom)
        tokens.setEnabled(ready)
        if not ready:
            diff.setToolTip("Load the model and transcoders to trace")
        return menu

    def show(self, node: int, where: QPoint) -> None:
        menu = self.menu_for(node)
        if menu is not None:
            menu.exec(where)

    def explain(self, node: int):
        g = self.controller.analysis.graph
        k = node - g.logit_offset
        others = [t for i, t in enumerate(g.logit_tokens) if i != k and not t.startswith("logit(")]
        b = ask_other_token(self.parent, g.logit_tokens[k], others)
        if b is None:
            return None
        return explain_difference(self.controller, node, b)

    def tokens(self, node: int):
        g = self.controller.analysis.graph
        k = node - g.logit_offset
        chosen = ask_tokens(self.parent, [t for t in g.logit_tokens if not t.startswith("logit(")],
                            g.logit_tokens[k])
        if not chosen:
            return None
        return trace_tokens(self.controller, chosen)
