"""The demo corpus generator: deterministic, held-out prompts disjoint from training, clear errors."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from circuit_studio.core.errors import CircuitStudioError
from circuit_studio.demo import corpus as C


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return C.generate_corpus(12000, seed=3)


def test_same_seed_same_corpus_and_other_seed_differs():
    a = C.generate_corpus(4000, seed=11)
    assert a == C.generate_corpus(4000, seed=11)
    assert a != C.generate_corpus(4000, seed=12)
    assert len(a) == 4000 and all(ln and "\n" not in ln for ln in a)


def test_write_corpus_is_deterministic(tmp_path):
    p1 = C.write_corpus(tmp_path / "a.txt", 2000, seed=5)
    p2 = C.write_corpus(tmp_path / "b.txt", 2000, seed=5)
    assert p1.read_bytes() == p2.read_bytes()
    assert C.read_corpus(p1) == C.generate_corpus(2000, seed=5)


def test_heldout_prompts_are_fixed_and_cover_every_behaviour():
    items = C.heldout_prompts()
    assert items == C.heldout_prompts()
    counts = Counter(e.behaviour for e in items)
    assert set(counts) == set(C.BEHAVIOURS)
    assert counts["addition"] == C.N_HELDOUT_ADDITION
    assert len(set((e.prompt, e.answer) for e in items)) == len(items)
    for e in items:
        assert e.prompt and e.answer and not e.prompt.endswith(" ")


def test_heldout_prompts_never_appear_verbatim_in_the_corpus(lines):
    text = "\n".join(lines)
    for e in C.heldout_prompts():
        assert e.prompt not in text, e
        assert e.prompt + e.answer not in text, e


def test_corpus_mixes_every_behaviour(lines):
    text = "\n".join(lines)
    assert "The capital of the state containing" in text
    assert re.search(r"^\d+\+\d+=\d+\.$", text, re.M)
    assert "The opposite of" in text and "List:" in text and " gave " in text
    assert C.natural_source()  # where the natural English comes from is reported


def test_training_facts_are_true(lines):
    two_hop = re.compile(r"[Tt]he capital of the state containing (.+) is (.+)\.$")
    add = re.compile(r"^(\d+)\+(\d+)=(\d+)\.$")
    n = 0
    for ln in lines:
        if m := two_hop.search(ln):
            city, cap = m.groups()
            if " is in " in ln:  # in-context form: the state given in the line decides
                state = ln.split(" is in ", 1)[1].split(".", 1)[0]
                assert next(s for s in C.STATES if s.name == state).capital == cap
            else:
                assert city in C.TWO_HOP_CITIES and C.STATE_BY_CITY[city].capital == cap
            n += 1
        elif m := add.match(ln):
            a, b, c = map(int, m.groups())
            assert a + b == c and not C._addition_is_heldout(a, b)
    assert n > 100


def test_split_is_disjoint_by_construction(lines):
    held_pairs = C.IOI_HELDOUT_PAIRS
    for ln in lines:
        names = {w.strip(".,") for w in ln.split()} & set(C.NAMES)
        if " gave " in ln or " handed " in ln or " passed " in ln:
            assert frozenset(names) not in held_pairs, ln
    # unseen two-hop cities only ever appear in single-hop sentences
    text = "\n".join(lines)
    for city in C.UNSEEN_TWO_HOP_CITIES:
        assert f"containing {city} " not in text, city
    # the held-out phrase of a fact is never used with that fact
    for s in C.STATES:
        p = C.PREFIXES[C.heldout_prefix_index("capital_of_state", s.name)]
        assert p.apply(f"The capital of {s.name} is {s.capital}.") not in lines


def test_bad_arguments_give_clear_errors():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(C.CorpusError, match="n_lines"):
            C.generate_corpus(bad)
    with pytest.raises(C.CorpusError, match="positive weight"):
        C.generate_corpus(10, mix=C.Mix(0, 0, 0, 0, 0, 0))


def test_read_corpus_rejects_empty_binary_and_missing_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(C.CorpusError, match="empty"):
        C.read_corpus(empty)
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(C.CorpusError, match="binary"):
        C.read_corpus(binary)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(C.CorpusError, match="not UTF-8"):
        C.read_corpus(latin1)
    with pytest.raises(C.CorpusError, match="does not exist"):
        C.read_corpus(tmp_path / "nope.txt")
    with pytest.raises(C.CorpusError, match="is a folder"):
        C.read_corpus(tmp_path)
    assert issubclass(C.CorpusError, CircuitStudioError)
    err = pytest.raises(C.CorpusError, C.read_corpus, empty).value
    assert str(empty) in str(err) and err.hint


def test_without_the_public_domain_text_generated_sentences_are_used(monkeypatch):
    monkeypatch.setattr(C, "_NATURAL", C.NaturalText("generated simple sentences (test)", ()))
    lines = C.generate_corpus(2000, seed=2, mix=C.Mix(0, 0, 0, 0, 0, 1))
    assert lines == C.generate_corpus(2000, seed=2, mix=C.Mix(0, 0, 0, 0, 0, 1))
    assert all(ln.endswith(".") for ln in lines) and len(set(lines)) > 100
    assert C.natural_source().startswith("generated")
