"""How tokens, layers and features are written: one rule each (core.display_text)."""

from __future__ import annotations

from circuit_studio.core.graph.display_text import elide, feature_name, layer_name, quoted, show_token, token_label


def test_tokens_in_running_text_keep_their_spaces_and_show_control_characters():
    assert show_token(" Dallas") == " Dallas"
    assert show_token("a\nb\tc\r") == "a↵b⇥c"
    assert show_token("") == "∅"
    assert show_token(" ") == " "


def test_a_token_standing_alone_is_never_blank():
    assert token_label(" is") == " is"
    assert token_label(" ") == "' '" and token_label("\t\t") == "⇥⇥" and token_label("") == "∅"
    assert quoted(" is") == "' is'" and quoted("\n") == "'↵'"


def test_layer_and_feature_names():
    assert [layer_name(layer, 4) for layer in (-1, 0, 3, 4)] == ["Emb", "L0", "L3", "Logit"]
    assert feature_name(3, 120) == "L3 #120"


def test_elide():
    assert elide("Dallas", 6) == "Dallas"
    assert elide("Dallas", 5) == "Dall…" and len(elide("x" * 50, 40)) == 40
