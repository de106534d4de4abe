"""How tokens, layers and features are written for people: one rule each, shared by every pane and report.

Qt-free, so that the panes, the exports and the command line name things the same way.
"""

from __future__ import annotations


def show_token(token: str) -> str:
    """A token as it reads in running text (spaces stay spaces): a newline shows as ↵, a tab as ⇥, a
    carriage return not at all, and the empty string as ∅, so that every token has a visible glyph."""
    if token == "":
        return "∅"
    return token.replace("\r", "").replace("\n", "↵").replace("\t", "⇥")


def token_label(token: str) -> str:
    """A token standing alone (an axis tick, a chart label): `show_token`, quoted when it would read as
    blank (a space token would otherwise leave an empty label)."""
    shown = show_token(token)
    return shown if shown.strip() else f"'{shown}'"


def quoted(token: str) -> str:
    """A token in quotes, as titles and tables show it: its leading space stays visible."""
    return f"'{show_token(token)}'"


def layer_name(layer: int, n_layers: int) -> str:
    """A graph row's name: "Emb" for the token embeddings (layer -1), "L0" .. "L{n-1}", "Logit" for the
    output row (layer `n_layers`), as `AttributionGraph.node_layers()` numbers them."""
    return "Emb" if layer < 0 else "Logit" if layer >= n_layers else f"L{layer}"


def feature_name(layer: int, feature: int) -> str:
    """A transcoder feature that has no label: "L3 #120"."""
    return f"L{layer} #{feature}"


def elide(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[:limit - 1] + "…"
