"""Task interface: samples (prompts with known answers) and scoring.

A `Task` turns a tokenizer, a target length in tokens, a sample count and a seed into a list of
`Sample`s, deterministically; `Task.score` compares a model's generated text with a sample's
answers. Tasks are data and scoring only: they never import a model or the integration.

Scoring (`exact_match_score`): the prediction and every answer are normalised (lower case,
punctuation other than ``-`` dropped, whitespace collapsed); an answer counts as found when it
occurs in the normalised prediction. A sample's score is the *fraction* of its answers found
(1.0 or 0.0 for single-answer tasks). Benchmarks read from files (LongBench v2, HELMET) and the
RULER aggregation tasks (CWE, FWE) override `score` with their authors' metric.

Two optional hooks for the evaluation runner/report: `Task.followup` (a second generation turn,
LongBench v2 chain of thought) and `Task.breakdown` (a benchmark's own summary of its rows).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol

from topkattn.errors import InputError

DEFAULT_INSTRUCTION_SUFFIX = "Answer with the number only."


class TokenizerLike(Protocol):
    """What tasks need from a Hugging Face tokenizer."""

    chat_template: str | None

    def __call__(self, text: str, **kwargs: Any) -> Any: ...

    def apply_chat_template(self, messages: list[dict], **kwargs: Any) -> Any: ...


@dataclass
class Sample:
    """One evaluation prompt with its reference answer(s).

    Attributes:
        id: stable identifier, unique within a task and length (e.g. ``"passkey-1024-3"``).
        task: registered task name.
        prompt: the full prompt text fed to the model (chat template already applied when the
            tokenizer has one; ends where the model should start answering).
        answers: reference answers; see the module docstring for how they are scored.
        length: the target prompt length in tokens that was asked for.
        depth: relative position in [0, 1] of the needle (the fact the question is about);
            None for benchmarks without a single needle (LongBench v2, HELMET).
        n_tokens: the actual prompt length in tokens of the task's tokenizer.
        messages: the chat messages the prompt was rendered from (None for raw prompts).
        metadata: task-specific details (needle keys, choices, ...), JSON-serialisable.
    """

    id: str
    task: str
    prompt: str
    answers: tuple[str, ...]
    length: int
    depth: float | None
    n_tokens: int = 0
    messages: list[dict] | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def answer(self) -> str:
        """The first (main) answer."""
        return self.answers[0]


def normalize(text: str) -> str:
    """Lower case, drop punctuation except ``-`` (UUIDs, keys), collapse whitespace."""
    text = text.lower()
    text = re.sub(r"[^\w\s-]", " ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, answers: tuple[str, ...] | list[str]) -> float:
    """Fraction of ``answers`` that occur in ``prediction`` after `normalize`.

    Numeric answers must occur as whole numbers: ``123`` is not found in ``41234``.
    """
    if not answers:
        return 0.0
    pred = normalize(prediction)
    found = 0
    for ans in answers:
        a = normalize(str(ans))
        if not a:
            continue
        if re.search(r"(?<![\w-])" + re.escape(a) + r"(?![\w-])", pred):
            found += 1
    return found / len(answers)


def count_tokens(tokenizer: TokenizerLike, text: str) -> int:
    """Number of tokens of ``text`` (no special tokens added: templates carry their own)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_prompt(tokenizer: TokenizerLike, user: str, answer_prefix: str = "",
                  system: str | None = None) -> tuple[str, list[dict] | None]:
    """The prompt text for a single user turn, and the messages it came from.

    Uses the tokenizer's chat template when it has one (generation prompt added), else the raw
    text followed by a newline. ``answer_prefix`` is appended after the generation prompt so the
    model continues straight into the answer.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False)
        return text + answer_prefix, messages
    head = f"{system}\n\n" if system else ""
    return f"{head}{user}\n{answer_prefix}", None


class Task(ABC):
    """A family of evaluation prompts.

    Subclasses set ``name`` and implement `samples`; `score` defaults to `exact_match_score`.
    """

    name: str = ""

    @abstractmethod
    def samples(self, tokenizer: TokenizerLike, length: int, n: int, seed: int) -> list[Sample]:
        """``n`` samples whose prompts are about ``length`` tokens long, fixed by ``seed``."""

    def score(self, prediction: str, sample: Sample) -> float:
        """Score in [0, 1] of a generated text against the sample's answers."""
        return exact_match_score(prediction, sample.answers)

    def followup(self, tokenizer: TokenizerLike, sample: Sample, prediction: str) -> str | None:
        """The prompt of a second turn built from the first turn's output, or None (one turn).

        A runner that supports two-turn tasks generates from this prompt (at most
        ``followup_max_new_tokens`` tokens) and scores *that* output with `score`. LongBench v2's
        chain-of-thought variant uses it; a runner that ignores it scores the first output.
        """
        return None

    followup_max_new_tokens: int = 128

    def breakdown(self, rows: list[dict]) -> dict | None:
        """Benchmark-specific summary of per-sample result rows (one setting), or None.

        ``rows`` are result records with at least ``sample_id`` and ``score``. LongBench v2
        returns accuracy overall, by difficulty and by length bucket (`LongBenchV2Task`).
        """
        return None


def check_length(length: int, max_length: int | None) -> None:
    """Raise ValueError when a target length is not positive or exceeds the model's context."""
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise InputError(f"length must be a positive number of tokens, got {length!r}")
    if max_length is not None and length > max_length:
        raise InputError(
            f"length {length} tokens exceeds the model's context limit "
            f"(max_position_embeddings={max_length})"
        )


def depths_for(n: int, lo: float = 0.0, hi: float = 1.0) -> list[float]:
    """``n`` needle depths evenly spaced over ``[lo, hi]`` (the middle for ``n == 1``)."""
    if n <= 0:
        return []
    if n == 1:
        return [(lo + hi) / 2]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]
