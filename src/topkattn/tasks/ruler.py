"""RULER's aggregation tasks (Hsieh et al., 2024): common and frequent words extraction.

Both are synthetic and deterministic given ``(tokenizer, length, n, seed)``, like the tasks of
`topkattn.tasks.synthetic`; the prompt (chat template included) fills ``length`` tokens as
closely as the word granularity allows and never exceeds it. There is no needle: ``depth`` is
None. Prompts, answer prefixes and sizes follow RULER's generators
(``scripts/data/synthetic/common_words_extraction.py`` and ``freq_words_extraction.py``) and
the templates HELMET uses for them:

- ``cwe`` (common words extraction): a numbered list ``1. w 2. w ...`` in which 10 words appear
  ``freq_cw`` = 30 times each and every other word ``freq_ucw`` = 3 times (6 and 1 below 4096
  tokens, as RULER); the question asks for the 10 most common words. One worked example
  (RULER's ``num_fewshot=1``: 40 words, 10/3 repeats; 20 words, 3/1 below 4096) comes first
  when it fits. Words are English words while the list needs no more than the built-in
  lexicon, else pronounceable pseudo-words (RULER likewise falls back to a larger word list).
- ``fwe`` (frequent words extraction): coded words (six random lowercase letters) drawn with
  Zipf frequencies, count of rank k = ``int(N * k**-alpha / zeta(alpha))``, ``alpha`` = 2,
  vocabulary ``(length - 50) // 50`` words; rank 1 is the noise token ``...``; the answer is
  ranks 2-4 (the three most frequent words).

Scoring is RULER's ``string_match_all``: the fraction of the gold words that occur in the
output, case-insensitive substring match (`string_match_all`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

from topkattn.errors import InputError
from topkattn.tasks.base import Sample, Task, TokenizerLike, check_length, count_tokens, \
    render_prompt

_LEXICON_TEXT = """
anchor apple arrow autumn badge bakery balcony bamboo banner barrel basket beacon bicycle
blanket blossom bottle bracelet breeze bridge bucket buffalo butter cabin cactus camera candle
canyon carpet castle cattle cellar chapel cherry chimney circus cliff clock closet cobbler
comet copper cotton cousin cradle crayon cricket crystal cupboard curtain cushion dagger
daisy desert diamond dolphin donkey dragon drawer eagle easel elbow engine envelope falcon
feather fence ferry fiddle forest fountain fossil garden garlic ginger glacier goblet
gravel guitar hammer harbor harvest hazel helmet hermit hollow honey hunter island ivory
jacket jasmine jelly jungle kettle kitten ladder lagoon lantern lemon lettuce lizard locket
magnet mango marble meadow melon mirror mitten monkey mortar muffin mustard napkin needle
nutmeg oyster paddle palace panther parrot pebble pepper pillow pirate plank pocket pony
potato puddle pumpkin puppet quarry quilt rabbit radish raven ribbon riddle rocket saddle
salmon satchel scarf scooter shovel silver skillet slipper spider spinach squirrel statue
stencil summit sunrise teapot thimble thunder tiger timber tomato tractor trumpet tulip
tunnel turnip turtle umbrella valley velvet violin walnut wagon walrus willow window wizard
yacht zebra brave clever gentle humble jolly lively mellow nimble proud quiet rapid sturdy
tender vivid witty ancient bitter bright crisp dusty fancy fierce frosty golden hasty
juicy lofty murky noisy polite rusty shiny silky sleepy smoky sunny tidy weary wicked
borrow carve dance drift fetch gather giggle hover juggle kneel launch mumble nibble paint
ponder quiver ramble scatter shiver sketch sprint stumble swallow tremble wander whisper
wobble yodel
"""


def _lexicon() -> tuple[str, ...]:
    words = sorted(set(_LEXICON_TEXT.split()))
    # no word inside another: string_match_all is a substring match
    return tuple(w for w in words if not any(w != o and w in o for o in words))


LEXICON = _lexicon()
_CONS, _VOWELS = "bdfgklmnprstvz", "aeiou"


def pseudo_words(rng: random.Random, n: int, syllables: int = 3) -> list[str]:
    """``n`` distinct pronounceable words of ``syllables`` consonant-vowel pairs."""
    out: dict[str, None] = {}
    while len(out) < n:
        out["".join(rng.choice(_CONS) + rng.choice(_VOWELS) for _ in range(syllables))] = None
    return list(out)


def coded_words(rng: random.Random, n: int, k: int = 6) -> list[str]:
    """``n`` distinct words of ``k`` random lowercase letters (RULER FWE's vocabulary)."""
    out: dict[str, None] = {}
    while len(out) < n:
        out["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(k))] = None
    return list(out)


def zeta(s: float, terms: int = 1000) -> float:
    """The Riemann zeta function for ``s > 1`` (Euler-Maclaurin tail; ~1e-12 accurate)."""
    if s <= 1:
        raise InputError(f"zeta needs s > 1, got {s!r}")
    head = sum(k ** -s for k in range(1, terms))
    n = float(terms)
    return head + n ** (1 - s) / (s - 1) + 0.5 * n ** -s + s * n ** (-s - 1) / 12


def string_match_all(prediction: str, references: tuple[str, ...] | list[str]) -> float:
    """RULER's ``string_match_all`` for one sample: share of references found (lower-cased)."""
    if not references:
        return 0.0
    pred = prediction.lower()
    return sum(1.0 for r in references if str(r).lower() in pred) / len(references)


def _fit(tokenizer: TokenizerLike, length: int, build: Callable[[int], str], lo: int,
         guess: int) -> tuple[str, int, int]:
    """Largest size ``w >= lo`` with ``count_tokens(build(w)) <= length`` (binary search).

    Returns ``(prompt, n_tokens, w)``; raises InputError when even ``lo`` does not fit.
    """
    text = build(lo)
    n = count_tokens(tokenizer, text)
    if n > length:
        raise InputError(f"length {length} tokens is too short for this task's prompt "
                         f"(needs at least {n} tokens)")
    best = (text, n, lo)
    hi = max(guess, lo + 1)
    while True:  # grow the upper bound until it overshoots
        t = build(hi)
        if t == best[0]:  # the size is capped: a larger one builds the same prompt
            return best
        c = count_tokens(tokenizer, t)
        if c > length:
            break
        best, lo, hi = (t, c, hi), hi, hi * 2
    lo, hi = best[2] + 1, hi - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        t = build(mid)
        c = count_tokens(tokenizer, t)
        if c <= length:
            best, lo = (t, c, mid), mid + 1
        else:
            hi = mid - 1
    return best


@dataclass
class AggregationTask(Task):
    """Common frame of CWE and FWE: a seeded word list sized to the target length."""

    intro: str = ""
    question: str = ""
    answer_prefix: str = ""
    max_new_tokens: int = 50

    def build(self, rng_seed: str, length: int) -> Callable[[int], tuple[str, tuple[str, ...]]]:
        """A function: size -> (user text, gold words); deterministic for ``rng_seed``."""
        raise NotImplementedError

    min_size: int = 1

    def samples(self, tokenizer: TokenizerLike, length: int, n: int, seed: int,
                max_length: int | None = None) -> list[Sample]:
        """``n`` samples of about ``length`` tokens, fixed by ``seed``."""
        check_length(length, max_length)
        out: list[Sample] = []
        for i in range(n):
            prompt, n_tok, w, user, gold = self.fit_sample(
                tokenizer, length, self.build(f"{self.name}/{seed}/{length}/{i}", length))
            messages = render_prompt(tokenizer, user, self.answer_prefix)[1]
            out.append(Sample(
                id=f"{self.name}-{length}-{seed}-{i}", task=self.name, prompt=prompt,
                answers=gold, length=length, depth=None, n_tokens=n_tok, messages=messages,
                metadata={"answer_prefix": self.answer_prefix, "size": w},
            ))
        return out

    def fit_sample(self, tokenizer: TokenizerLike, length: int, make) -> tuple:
        """``(prompt, n_tokens, size, user text, gold words)`` of the largest size that fits."""

        def render(w: int) -> str:
            return render_prompt(tokenizer, make(w)[0], self.answer_prefix)[0]

        prompt, n_tok, w = _fit(tokenizer, length, render, self.min_size,
                                max(self.min_size + 1, length // 8))
        user, gold = make(w)
        return prompt, n_tok, w, user, gold

    def score(self, prediction: str, sample: Sample) -> float:
        """RULER's ``string_match_all``: the fraction of the gold words in the output."""
        return string_match_all(prediction, sample.answers)


def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


@dataclass
class CommonWordsTask(AggregationTask):
    """RULER ``cwe``: name the ``num_cw`` words repeated most often in a numbered list.

    Attributes:
        num_cw: common words (the answer), 10.
        freq_cw, freq_ucw: repeats of a common / uncommon word (30 / 3; 6 / 1 below 4096).
        fewshot: prepend RULER's one worked example when it fits.
    """

    name: str = "cwe"
    num_cw: int = 10
    freq_cw: int = 30
    freq_ucw: int = 3
    fewshot: bool = True
    max_new_tokens: int = 120
    intro: str = ("Below is a numbered list of words. In these words, some appear more often "
                  "than others. Memorize the ones that appear most often.")
    question: str = "Question: What are the 10 most common words in the above list?"
    answer_prefix: str = "Answer: The top 10 words that appear most often in the list are:"

    def __post_init__(self) -> None:
        self.min_size = self.num_cw + 1
        self.question = f"Question: What are the {self.num_cw} most common words in the above list?"
        self.answer_prefix = (f"Answer: The top {self.num_cw} words that appear most often in "
                              "the list are:")

    def build(self, rng_seed, length):
        rng = random.Random(rng_seed)
        small = length < 4096
        ex_n, ex_cw, ex_ucw = (20, 3, 1) if small else (40, 10, 3)
        rc, ru = (6, 1) if small else (self.freq_cw, self.freq_ucw)
        # English words while the list needs no more than the lexicon holds (RULER: the
        # wonderwords list, else a larger one); pseudo-words are drawn lazily, once
        lexicon = list(LEXICON)
        rng.shuffle(lexicon)
        pseudo: list[str] = []

        def pool_for(w: int) -> list[str]:
            if not make.pseudo:
                return lexicon
            if len(pseudo) < w + ex_n:
                pseudo[:] = pseudo_words(random.Random(rng_seed + "/pseudo"), 2 * (w + ex_n))
            return pseudo

        def example(pool: list[str]) -> str:
            ex_words = pool[-ex_n:]
            common = ex_words[:self.num_cw]
            lst = common * ex_cw + ex_words[self.num_cw:] * ex_ucw
            random.Random(rng_seed + "/example").shuffle(lst)
            return (f"{self.intro}\n{_numbered(lst)}\n{self.question}\n{self.answer_prefix} "
                    f"{_numbered(common)}")

        def make(w: int) -> tuple[str, tuple[str, ...]]:
            pool = pool_for(w)
            if not make.pseudo:
                w = min(w, len(lexicon) - ex_n)
            words = pool[:w]  # never overlaps the example's words (the pool's end)
            common, uncommon = words[:self.num_cw], words[self.num_cw:]
            lst = common * rc + uncommon * ru
            random.Random(f"{rng_seed}/{w}").shuffle(lst)
            body = f"{self.intro}\n{_numbered(lst)}\n{self.question}"
            return (f"{example(pool)}\n\n{body}" if self.fewshot else body), tuple(common)

        make.pseudo = False
        make.lexicon_max = len(lexicon) - ex_n
        return make

    def fit_sample(self, tokenizer, length, make):
        """English words when the list fits in the lexicon, else pseudo-words throughout."""
        out = super().fit_sample(tokenizer, length, make)
        if out[2] >= make.lexicon_max:  # the lexicon ran out before the length was filled
            make.pseudo = True
            out = super().fit_sample(tokenizer, length, make)
        return out

    def samples(self, tokenizer, length, n, seed, max_length=None):
        try:
            return super().samples(tokenizer, length, n, seed, max_length)
        except InputError:
            if not self.fewshot:
                raise
        # the worked example does not fit this length: RULER's list alone
        return CommonWordsTask(num_cw=self.num_cw, freq_cw=self.freq_cw,
                               freq_ucw=self.freq_ucw, fewshot=False).samples(
            tokenizer, length, n, seed, max_length)


@dataclass
class FrequentWordsTask(AggregationTask):
    """RULER ``fwe``: name the three most frequent coded words of a Zipf-distributed text.

    Attributes:
        alpha: the Zipf exponent (2.0).
        coded_wordlen: letters of a coded word (6).
    """

    name: str = "fwe"
    alpha: float = 2.0
    coded_wordlen: int = 6
    max_new_tokens: int = 50
    intro: str = ("Read the following coded text and track the frequency of each coded word. "
                  "Find the three most frequently appeared coded words.")
    question: str = ("Question: Do not provide any explanation. Please ignore the dots '....'. "
                     "What are the three most frequently appeared words in the above coded "
                     "text?")
    answer_prefix: str = ("Answer: According to the coded text above, the three most frequently "
                          "appeared words are:")

    def __post_init__(self) -> None:
        if self.alpha <= 1:
            raise InputError(f"alpha must be > 1, got {self.alpha!r}")
        z = zeta(self.alpha)
        # smallest text in which ranks 2-4 are strictly more frequent than rank 5
        n = 10
        while not self._ordered(n, z):
            n += 1
        self.min_size = n

    def _counts(self, n_words: int, vocab: int, z: float) -> list[int]:
        return [int(n_words * (k ** -self.alpha) / z) for k in range(1, vocab + 1)]

    def _ordered(self, n_words: int, z: float) -> bool:
        c = self._counts(n_words, 5, z)
        return c[1] > c[2] > c[3] > c[4]

    def build(self, rng_seed, length):
        rng = random.Random(rng_seed)
        vocab_size = max((length - self.max_new_tokens) // 50, 5)
        vocab = coded_words(rng, vocab_size, self.coded_wordlen)
        vocab[0] = "..."  # the top-ranked word is noise, as in RULER
        z = zeta(self.alpha)

        def make(w: int) -> tuple[str, tuple[str, ...]]:
            words = [v for v, c in zip(vocab, self._counts(w, len(vocab), z)) for _ in range(c)]
            random.Random(f"{rng_seed}/{w}").shuffle(words)
            return f"{self.intro}\n{' '.join(words)}\n{self.question}", tuple(vocab[1:4])

        return make


AGGREGATION_TASKS: dict[str, Callable[[], Task]] = {
    "cwe": CommonWordsTask,
    "fwe": FrequentWordsTask,
}

__all__ = ["AGGREGATION_TASKS", "AggregationTask", "CommonWordsTask", "FrequentWordsTask",
           "LEXICON", "string_match_all", "zeta"]
