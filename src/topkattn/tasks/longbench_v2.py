"""LongBench v2 (Bai et al., 2024) from a local JSON/JSONL file: multiple choice A-D.

Each record has ``_id``, ``domain``, ``question``, ``choice_A`` .. ``choice_D``, ``answer`` (a
letter) and ``context``. The context is middle-truncated so that the whole prompt fits the
target length; the prompt follows LongBench v2's own template and ends with the answer prefix
``The correct answer is (`` so that the model's first token is the letter. Scoring extracts the
first letter A-D of the prediction (1.0 when it is the right one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from topkattn.tasks.base import Sample, Task, TokenizerLike, check_length, render_prompt
from topkattn.tasks.files import fit_context, read_records, seeded_pick

TEMPLATE = (
    "Please read the following text and answer the question below.\n\n<text>\n{context}\n"
    "</text>\n\nWhat is the correct answer to this question: {question}\nChoices:\n"
    "(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
    'Format your response as follows: "The correct answer is (insert answer here)".'
)
from topkattn.errors import InputError
ANSWER_PREFIX = "The correct answer is ("
REQUIRED = ("question", "choice_A", "choice_B", "choice_C", "choice_D", "answer", "context")


def extract_choice(prediction: str) -> str | None:
    """The chosen letter: ``"B) ..."``, ``"(C)"``, ``"answer is D"`` -> B, C, D; else None."""
    m = re.search(r"\b([ABCD])\b", prediction.strip().upper())
    return m.group(1) if m else None


@dataclass
class LongBenchV2Task(Task):
    """LongBench v2 multiple-choice questions read from ``path``.

    `samples` takes ``n`` records (shuffled by ``seed``; all of them when ``n`` exceeds the
    file) and fits each to ``length`` tokens. ``depth`` is None: there is no single needle.
    """

    path: str = ""
    name: str = "longbench_v2"
    max_new_tokens: int = 4

    def records(self) -> list[dict]:
        recs = read_records(self.path)
        for i, r in enumerate(recs):
            missing = [f for f in REQUIRED if f not in r]
            if missing:
                raise InputError(f"{self.path!r}: record {i} lacks LongBench v2 fields "
                                 f"{missing}")
        return recs

    def samples(self, tokenizer: TokenizerLike, length: int, n: int, seed: int,
                max_length: int | None = None) -> list[Sample]:
        check_length(length, max_length)
        out = []
        for i, r in seeded_pick(self.records(), n, seed):

            def render(ctx: str, r: dict = r) -> str:
                user = TEMPLATE.format(context=ctx, question=r["question"], A=r["choice_A"],
                                       B=r["choice_B"], C=r["choice_C"], D=r["choice_D"])
                return render_prompt(tokenizer, user, ANSWER_PREFIX)[0]

            prompt, n_tok = fit_context(tokenizer, str(r["context"]), length, render)
            answer = str(r["answer"]).strip().strip("()").upper()
            out.append(Sample(
                id=str(r.get("_id", f"lbv2-{i}")), task=self.name, prompt=prompt,
                answers=(answer,), length=length, depth=None, n_tokens=n_tok,
                metadata={"domain": r.get("domain"), "difficulty": r.get("difficulty"),
                          "answer_prefix": ANSWER_PREFIX},
            ))
        return out

    def score(self, prediction: str, sample: Sample) -> float:
        """1.0 when the first letter A-D in the prediction is the right choice."""
        return float(extract_choice(prediction) == sample.answers[0])
