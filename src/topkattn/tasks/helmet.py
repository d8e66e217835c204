"""HELMET (Yen et al., 2024) recall-style tasks from a local JSONL/JSON file.

Supported fields (the common ones of HELMET's recall tasks, e.g. JSON KV and RULER needles):
the context is ``context`` (optional), the question is ``question`` or else ``input``; the
reference is ``answers`` (a list, or a list of lists) or ``answer``. The context is
middle-truncated so that the prompt fits the target length.

Scoring: by default a sample scores 1.0 when *any* reference answer occurs in the prediction
(HELMET's answers are alternatives); ``match="all"`` scores the fraction of answers found
(for records whose answers are several required values).
"""

from __future__ import annotations

from dataclasses import dataclass

from topkattn.tasks.base import (Sample, Task, TokenizerLike, check_length, exact_match_score,
                                 render_prompt)
from topkattn.tasks.files import fit_context, read_records, seeded_pick
from topkattn.errors import InputError


def _answers(rec: dict) -> tuple[str, ...]:
    ans = rec.get("answers", rec.get("answer"))
    if ans is None:
        return ()
    if isinstance(ans, (list, tuple)):
        flat: list[str] = []
        for a in ans:
            flat.extend(str(x) for x in a) if isinstance(a, (list, tuple)) else flat.append(
                str(a))
        return tuple(flat)
    return (str(ans),)


@dataclass
class HelmetTask(Task):
    """HELMET records read from ``path``; ``match`` is ``"any"`` or ``"all"``."""

    path: str = ""
    name: str = "helmet"
    match: str = "any"
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if self.match not in ("any", "all"):
            raise InputError(f"match must be 'any' or 'all', got {self.match!r}")

    def records(self) -> list[dict]:
        recs = read_records(self.path)
        for i, r in enumerate(recs):
            if not (r.get("question") or r.get("input")) or not _answers(r):
                raise InputError(f"{self.path!r}: record {i} needs 'question' or 'input', and "
                                 "'answers' or 'answer'")
        return recs

    def samples(self, tokenizer: TokenizerLike, length: int, n: int, seed: int,
                max_length: int | None = None) -> list[Sample]:
        check_length(length, max_length)
        out = []
        for i, r in seeded_pick(self.records(), n, seed):
            question = str(r.get("question") or r.get("input"))
            context = str(r.get("context") or "")

            def render(ctx: str, question: str = question) -> str:
                user = f"{ctx}\n\n{question}" if ctx else question
                return render_prompt(tokenizer, user)[0]

            prompt, n_tok = fit_context(tokenizer, context, length, render)
            out.append(Sample(
                id=str(r.get("id", r.get("_id", f"helmet-{i}"))), task=self.name,
                prompt=prompt, answers=_answers(r), length=length, depth=r.get("depth"),
                n_tokens=n_tok, metadata={"match": self.match},
            ))
        return out

    def score(self, prediction: str, sample: Sample) -> float:
        if self.match == "all":
            return exact_match_score(prediction, sample.answers)
        return float(any(exact_match_score(prediction, (a,)) for a in sample.answers))
