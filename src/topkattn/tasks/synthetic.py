"""Synthetic long-context retrieval tasks in the style of RULER (Hsieh et al., 2024).

Four tasks, each deterministic given ``(tokenizer, length, n, seed)``:

- ``passkey``: a five-digit pass key hidden in filler text; "what is the pass key?".
- ``niah_multikey``: several needles "the special magic number for <key> is <7 digits>" with
  different keys; the question asks for one key's number (the others are distractors).
- ``vartrack``: variable tracking: ``VAR A = 12345`` and a chain ``VAR B = VAR A`` spread
  through the filler, plus a distractor chain; the question asks the value of the chain's end.
- ``kv``: key-value retrieval: a JSON object of UUID -> UUID pairs; "the value for key X?".

Prompt length is measured in tokens of the given tokenizer, including the chat template, and
lands within a few tokens of the target (never above it). The needle depth (relative position
of the asked-for fact in the haystack, 0 = start, 1 = end) is swept evenly over the samples.
Filler is built from varied, digit-free natural sentences drawn from a seeded grammar, not one
repeated sentence: the small embedded model retrieves far better from varied text.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Callable

from topkattn.tasks.base import (
    Sample,
    Task,
    TokenizerLike,
    check_length,
    count_tokens,
    depths_for,
    render_prompt,
)
from topkattn.errors import InputError

# --------------------------------------------------------------------------------------------
# Filler: a small seeded grammar of digit-free sentences.

_SUBJECTS = [
    "The old fisherman", "A young painter", "The village baker", "Our neighbour",
    "The tired traveller", "A small child", "The museum guide", "The librarian",
    "A quiet student", "The farmer's daughter", "The ship's captain", "An elderly teacher",
    "The mayor", "A curious cat", "The night watchman", "My grandmother", "The gardener",
    "A group of hikers", "The postman", "The young doctor", "A street musician",
    "The shopkeeper", "The carpenter", "Two old friends",
]
_ACTIONS = [
    "watched the clouds drift slowly over the hills",
    "repaired the wooden fence behind the barn",
    "read a long letter from a distant cousin",
    "planted tomatoes along the garden wall",
    "walked along the river to the old stone bridge",
    "baked bread for the whole street",
    "painted the door of the cottage a bright blue",
    "told a story about a storm at sea",
    "collected shells on the empty beach",
    "climbed the narrow path to the lighthouse",
    "fed the ducks at the edge of the pond",
    "sorted a pile of dusty books in the attic",
    "sang an old song while sweeping the yard",
    "carried a basket of apples to the market",
    "mended a torn sail in the harbour",
    "searched the forest for wild mushrooms",
    "wrote a few lines in a worn notebook",
    "listened to the rain on the tin roof",
    "lit a fire in the small stone hearth",
    "cleaned the windows of the little shop",
    "followed the tracks of a fox across the snow",
    "brewed a pot of strong tea for the visitors",
    "tuned the strings of an old violin",
    "drew a map of the valley from memory",
]
_TIMES = [
    "in the early morning", "after the rain stopped", "before the market opened",
    "on a windy afternoon", "during the long winter", "late in the evening",
    "at the end of the summer", "on the first day of spring", "while the town was asleep",
    "just before sunset", "on a grey and quiet day", "when the bells rang at noon",
]
_PLACES = [
    "the harbour", "the valley", "the old mill", "the northern village", "the market square",
    "the pine forest", "the chapel on the hill", "the lake", "the orchard", "the quiet lane",
]
_ADJECTIVES = [
    "calm", "crowded", "misty", "peaceful", "cold", "bright", "silent", "busy", "golden",
    "windy",
]
_REMARKS = [
    "nobody in town could remember a finer season",
    "the roads were muddy but the air smelled of pine",
    "the swallows had come back earlier than usual",
    "the old clock in the square had stopped again",
    "the river was higher than anyone had seen in years",
    "the bakery sold out of bread before midday",
    "the children were already planning the summer fair",
    "the fields were covered in a thin layer of frost",
]


def filler_sentence(rng: random.Random) -> str:
    """One varied, digit-free sentence drawn from a small grammar."""
    shape = rng.randrange(5)
    if shape == 0:
        return f"{rng.choice(_SUBJECTS)} {rng.choice(_ACTIONS)} {rng.choice(_TIMES)}."
    if shape == 1:
        return (f"{rng.choice(_TIMES).capitalize()}, {rng.choice(_SUBJECTS).lower()} "
                f"{rng.choice(_ACTIONS)}.")
    if shape == 2:
        return (f"{rng.choice(_PLACES).capitalize()} was {rng.choice(_ADJECTIVES)} "
                f"{rng.choice(_TIMES)}, and {rng.choice(_REMARKS)}.")
    if shape == 3:
        return f"{rng.choice(_SUBJECTS)} often said that {rng.choice(_REMARKS)}."
    return (f"Near {rng.choice(_PLACES)}, {rng.choice(_SUBJECTS).lower()} "
            f"{rng.choice(_ACTIONS)}.")


# --------------------------------------------------------------------------------------------
# Haystack assembly to a target token length.


@dataclass(frozen=True)
class Needle:
    """A unit of text to insert at a relative depth in the haystack."""

    depth: float
    text: str


def build_prompt(
    tokenizer: TokenizerLike,
    length: int,
    render: Callable[[str], str],
    make_unit: Callable[[], str],
    needles: list[Needle],
    sep: str = " ",
) -> tuple[str, int, str]:
    """Fill a haystack of filler units so that ``render(haystack)`` is about ``length`` tokens.

    ``render`` wraps the haystack into the full prompt (instructions, question, chat
    template). Needles are inserted between filler units at their relative depth; needles
    with equal depth keep their order. The result never exceeds ``length`` tokens and is
    usually within a few tokens of it. Returns the prompt, its token count and the haystack.
    """
    overhead = count_tokens(tokenizer, render(sep.join(n.text for n in needles)))
    if overhead > length:
        raise InputError(
            f"length {length} tokens is too short for this task's prompt "
            f"(needs at least {overhead} tokens)"
        )
    units: list[str] = []
    costs: list[int] = []
    budget = length - overhead
    total = 0
    while total < budget:
        u = make_unit()
        c = count_tokens(tokenizer, sep + u)
        units.append(u)
        costs.append(c)
        total += c

    def haystack(m: int) -> str:
        parts = list(units[:m])
        # Insert deepest first so earlier indices stay valid.
        order = sorted(range(len(needles)), key=lambda i: (needles[i].depth, i), reverse=True)
        for i in order:
            parts.insert(round(needles[i].depth * m), needles[i].text)
        return sep.join(parts)

    m = len(units)
    for _ in range(40):
        hay = haystack(m)
        text = render(hay)
        n_tok = count_tokens(tokenizer, text)
        if n_tok <= length:
            # Add one more unit if it still fits.
            if m < len(units):
                nxt_hay = haystack(m + 1)
                nxt = render(nxt_hay)
                n_nxt = count_tokens(tokenizer, nxt)
                if n_nxt <= length:
                    m = m + 1
                    continue
            return text, n_tok, hay
        # Too long: drop about as many units as the overshoot needs.
        over = n_tok - length
        drop, acc = 0, 0
        while acc < over and drop < m:
            acc += costs[m - 1 - drop]
            drop += 1
        m = max(0, m - max(1, drop))
    return text, n_tok, hay  # pragma: no cover - the loop converges in a few steps


# --------------------------------------------------------------------------------------------
# Tasks.


@dataclass
class Case:
    """What one sample is about: needles, the question, the answer and the answer prefix."""

    needles: list[Needle]
    question: str
    answer: str
    metadata: dict
    answer_prefix: str = ""


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randrange(10 ** (n - 1), 10 ** n))


_KEY_ADJ = ["amber", "silent", "crimson", "hollow", "brisk", "gentle", "frozen", "golden",
            "rusty", "lunar", "misty", "noble", "velvet", "wild", "bitter", "cobalt"]
_KEY_NOUN = ["falcon", "harbor", "lantern", "meadow", "cipher", "willow", "anchor", "ember",
             "glacier", "orchid", "compass", "thistle", "raven", "summit", "marble", "tide"]


def _word_key(rng: random.Random) -> str:
    return f"{rng.choice(_KEY_ADJ)}-{rng.choice(_KEY_NOUN)}"


def _var_name(rng: random.Random) -> str:
    return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(5))


@dataclass
class HaystackTask(Task):
    """Common frame of the synthetic tasks: filler haystack, needles, question at the end.

    Subclasses implement `make_case` (needles, question, answer, metadata for one sample).
    Attributes:
        depth_lo, depth_hi: the needle depth range swept over the samples.
        intro, suffix: text before the haystack and after the question.
        sep: the separator between filler units.
        max_new_tokens: the default answer budget of the evaluation runner.
    Each `Case` carries an answer prefix: text after the chat template's generation prompt
    that the model continues from (e.g. ``"The pass key is"``), so that it answers at once.
    """

    depth_lo: float = 0.0
    depth_hi: float = 1.0
    max_new_tokens: int = 12
    intro: str = ""
    suffix: str = "Answer with the number only."

    def make_case(self, rng: random.Random, depth: float) -> Case:
        """Needles (the asked-for one at ``depth``), question, answer and answer prefix."""
        raise NotImplementedError

    sep: str = " "

    def make_unit(self, rng: random.Random) -> str:
        """One filler unit (a sentence; a JSON pair for `KeyValueTask`)."""
        return filler_sentence(rng)

    def render_user(self, haystack: str, question: str) -> str:
        return f"{self.intro}\n\n{haystack}\n\n{question} {self.suffix}".strip()

    def samples(self, tokenizer: TokenizerLike, length: int, n: int, seed: int,
                max_length: int | None = None) -> list[Sample]:
        """``n`` samples of about ``length`` tokens; depths evenly spaced; fixed by ``seed``.

        ``max_length`` (the model's context) makes a longer ``length`` a ValueError.
        """
        check_length(length, max_length)
        out: list[Sample] = []
        for i, depth in enumerate(depths_for(n, self.depth_lo, self.depth_hi)):
            rng = random.Random(f"{self.name}/{seed}/{length}/{i}")
            case = self.make_case(rng, depth)

            def render(hay: str, case: Case = case) -> str:
                return render_prompt(tokenizer, self.render_user(hay, case.question),
                                     case.answer_prefix)[0]

            prompt, n_tok, hay = build_prompt(tokenizer, length, render,
                                              lambda rng=rng: self.make_unit(rng), case.needles,
                                              self.sep)
            _, messages = render_prompt(tokenizer, self.render_user(hay, case.question),
                                        case.answer_prefix)
            meta = dict(case.metadata, answer_prefix=case.answer_prefix)
            out.append(Sample(
                id=f"{self.name}-{length}-{seed}-{i}", task=self.name, prompt=prompt,
                answers=(case.answer,), length=length, depth=round(depth, 4), n_tokens=n_tok,
                messages=messages, metadata=meta,
            ))
        return out


@dataclass
class PasskeyTask(HaystackTask):
    """Pass key retrieval (Mohtashami & Jaggi, 2023): one five-digit key in filler text."""

    name: str = "passkey"
    intro: str = ("There is a pass key hidden inside a lot of irrelevant text. "
                  "Find it and memorize it. I will quiz you about the pass key.")

    def make_case(self, rng, depth):
        key = _digits(rng, 5)
        needle = f"The pass key is {key}. Remember it. {key} is the pass key."
        return Case([Needle(depth, needle)], "What is the pass key?", key, {"passkey": key},
                    "The pass key is")


@dataclass
class MultiKeyNiahTask(HaystackTask):
    """Multi-key needle in a haystack (RULER ``niah_multikey_1``): one target among distractors.

    Attributes:
        n_needles: needles in total (one asked for, the rest distractors at random depths).
    """

    name: str = "niah_multikey"
    n_needles: int = 4
    intro: str = ("Some special magic numbers are hidden within the following text. "
                  "Make sure to memorize them. I will quiz you about the numbers afterwards.")

    def make_case(self, rng, depth):
        keys: list[str] = []
        while len(keys) < self.n_needles:
            k = _word_key(rng)
            if k not in keys:
                keys.append(k)
        values = [_digits(rng, 7) for _ in keys]
        needles = [Needle(depth, f"One of the special magic numbers for {keys[0]} is: "
                                 f"{values[0]}.")]
        for k, v in zip(keys[1:], values[1:]):
            needles.append(Needle(rng.random(), f"One of the special magic numbers for {k} is: "
                                                f"{v}."))
        q = f"What is the special magic number for {keys[0]} mentioned in the provided text?"
        return Case(needles, q, values[0],
                    {"key": keys[0], "distractors": dict(zip(keys[1:], values[1:]))},
                    f"The special magic number for {keys[0]} is")


@dataclass
class VariableTrackingTask(HaystackTask):
    """Variable tracking (RULER ``vt``): follow a chain of assignments to its value.

    ``VAR A = 12345`` is placed at the sample's depth and ``hops`` assignments
    ``VAR B = VAR A`` ... follow later in the text; a distractor chain with another value is
    spread at random depths when ``distractor_chain`` is set (off by default: with it the
    embedded 135M model fell from 5/6 to 5/8 correct with full attention at 1k tokens). The
    question asks the value of the chain's last variable.
    """

    name: str = "vartrack"
    hops: int = 1
    distractor_chain: bool = False
    intro: str = ("Memorize and track the chain of variable assignments hidden in the "
                  "following text.")

    def make_case(self, rng, depth):
        names: list[str] = []
        while len(names) < 2 * (self.hops + 1):
            v = _var_name(rng)
            if v not in names:
                names.append(v)
        chain, other = names[: self.hops + 1], names[self.hops + 1:]
        value, other_value = _digits(rng, 5), _digits(rng, 5)
        # The chain's statements go in order from the sample's depth towards the end.
        step = (1.0 - depth) / (self.hops + 1) if depth < 1.0 else 0.0
        needles = [Needle(depth, f"VAR {chain[0]} = {value}.")]
        for j in range(1, self.hops + 1):
            needles.append(Needle(min(1.0, depth + step * j), f"VAR {chain[j]} = "
                                                              f"VAR {chain[j - 1]}."))
        d = sorted(rng.random() for _ in other)  # drawn always: the seed fixes the chain
        meta: dict = {"chain": chain}
        if self.distractor_chain:
            needles.append(Needle(d[0], f"VAR {other[0]} = {other_value}."))
            for j in range(1, len(other)):
                needles.append(Needle(d[j], f"VAR {other[j]} = VAR {other[j - 1]}."))
            meta.update(distractor_chain=other, distractor_value=other_value)
        q = f"What is the numeric value of VAR {chain[-1]}?"
        return Case(needles, q, value, meta, f"The numeric value of VAR {chain[-1]} is")


@dataclass
class KeyValueTask(HaystackTask):
    """Key-value retrieval (Liu et al., "Lost in the Middle"): UUID pairs in a JSON object.

    The haystack is the JSON object itself: filler units are random UUID pairs; the asked-for
    pair sits at the sample's depth.
    """

    name: str = "kv"
    max_new_tokens: int = 32
    intro: str = ("Extract the value corresponding to the specified key in the JSON "
                  "object below.\n\nJSON data:")
    suffix: str = "Answer with the value only."
    sep: str = ", "

    def make_unit(self, rng):
        return f'"{_uuid(rng)}": "{_uuid(rng)}"'

    def render_user(self, haystack, question):
        return f"{self.intro}\n{{{haystack}}}\n\n{question} {self.suffix}"

    def make_case(self, rng, depth):
        key, value = _uuid(rng), _uuid(rng)
        q = f'Key: "{key}"\nWhat is the value corresponding to this key?'
        return Case([Needle(depth, f'"{key}": "{value}"')], q, value, {"key": key},
                    f'The value of "{key}" is "')


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


SYNTHETIC_TASKS: dict[str, Callable[[], Task]] = {
    "passkey": PasskeyTask,
    "niah_multikey": MultiKeyNiahTask,
    "vartrack": VariableTrackingTask,
    "kv": KeyValueTask,
}

__all__ = [
    "KeyValueTask",
    "MultiKeyNiahTask",
    "Needle",
    "PasskeyTask",
    "SYNTHETIC_TASKS",
    "VariableTrackingTask",
    "build_prompt",
    "filler_sentence",
]
