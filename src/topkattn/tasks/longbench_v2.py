"""LongBench v2 (Bai et al., 2024) from a local JSON/JSONL file, scored as its authors score it.

Input: the official ``data.json`` (503 questions; huggingface.co/datasets/THUDM/LongBench-v2) or
any JSON list / JSONL file of records with the official fields ``_id``, ``domain``,
``sub_domain``, ``difficulty`` (easy/hard), ``length`` (short/medium/long), ``question``,
``choice_A`` .. ``choice_D``, ``answer`` (a letter) and ``context``. ``question``, the four
choices, ``answer`` and ``context`` are required; a record lacking them is an error naming them.

Processing, as LongBench v2's ``pred.py``:

- the prompt is ``prompts/0shot.txt`` (`TEMPLATE_0SHOT`), or with ``cot=True`` the
  chain-of-thought prompt ``prompts/0shot_cot.txt`` (`TEMPLATE_COT`); fields are ``.strip()``-ed;
- the prompt is middle-truncated to the token budget: its first and last halves are kept
  (``input_ids[:max_len//2] + input_ids[-max_len//2:]``; ``truncation="prompt"``, the
  default). ``pred.py`` truncates the user message before the chat template is applied; here
  the budget is the target length less the chat template's own tokens, so the rendered prompt
  fits ``length``. ``truncation="context"`` cuts only the document's middle instead;
- the answer is extracted with the official `extract_answer` (``*`` removed, then
  ``The correct answer is (X)``, then ``The correct answer is X``; anything else is None and
  counts as wrong).

Generation aid (not in ``pred.py``): by default the 0-shot prompt ends with the answer prefix
``The correct answer is (`` so a short decode (`max_new_tokens` 4) yields the letter; scoring
puts the prefix back in front of the generated text before extracting, so ``B)`` reads as
``The correct answer is (B)``. ``answer_prefix=False`` leaves the prompt as ``pred.py`` sends
it (the model writes the whole sentence; 128 new tokens, as ``pred.py``).

Chain of thought, two turns in ``pred.py``: (1) the CoT prompt, up to 1024 new tokens;
(2) ``prompts/0shot_cot_ans.txt`` (`TEMPLATE_COT_ANS`: the question, the choices and the first
turn's reasoning, *without* the document) up to 128 tokens, whose answer is extracted.
`LongBenchV2Task.followup` builds turn 2's prompt; a runner that calls it and scores turn 2's
output reproduces ``pred.py``. A runner that does not scores turn 1's text directly with
`extract_answer` (an approximation: a reasoning that never writes "The correct answer is ..."
counts as wrong).

Output: `longbench_v2_breakdown` (also `LongBenchV2Task.breakdown`) gives accuracy overall, by
difficulty and by length bucket, each with its sample count and a 95% Wilson interval.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from topkattn.errors import InputError
from topkattn.tasks.base import Sample, Task, TokenizerLike, check_length, render_prompt
from topkattn.tasks.files import check_fields, fit_text, read_records, seeded_pick
from topkattn.tasks.stats import accuracy

TEMPLATE_0SHOT = (
    "Please read the following text and answer the question below.\n\n<text>\n$DOC$\n</text>\n\n"
    "What is the correct answer to this question: $Q$\nChoices:\n(A) $C_A$\n(B) $C_B$\n"
    "(C) $C_C$\n(D) $C_D$\n\n"
    'Format your response as follows: "The correct answer is (insert answer here)".'
)
TEMPLATE_COT = (
    "Please read the following text and answer the questions below.\n\n<text>\n$DOC$\n"
    "</text>\n\nWhat is the correct answer to this question: $Q$\nChoices:\n(A) $C_A$\n"
    "(B) $C_B$\n(C) $C_C$\n(D) $C_D$\n\nLet\u2019s think step by step:"
)
TEMPLATE_COT_ANS = (
    "Please read the following text and answer the questions below.\n\nThe text is too long "
    "and omitted here.\n\nWhat is the correct answer to this question: $Q$\nChoices:\n"
    "(A) $C_A$\n(B) $C_B$\n(C) $C_C$\n(D) $C_D$\n\nLet\u2019s think step by step: $COT$\n\n"
    "Based on the above, what is the single, most likely answer choice? Format your response "
    'as follows: "The correct answer is (insert answer here)".'
)
# The old name of the 0-shot template (str.format style was replaced by the official $...$).
TEMPLATE = TEMPLATE_0SHOT
ANSWER_PREFIX = "The correct answer is ("
REQUIRED = ("question", "choice_A", "choice_B", "choice_C", "choice_D", "answer", "context")
DIFFICULTIES = ("easy", "hard")
LENGTHS = ("short", "medium", "long")
TRUNCATIONS = ("prompt", "context")


def fill(template: str, rec: dict, doc: str | None = None, cot: str | None = None) -> str:
    """``template`` with the record's fields put in, as ``pred.py`` does (each ``.strip()``-ed)."""
    out = template
    if doc is not None:
        out = out.replace("$DOC$", doc.strip())
    out = (out.replace("$Q$", str(rec["question"]).strip())
           .replace("$C_A$", str(rec["choice_A"]).strip())
           .replace("$C_B$", str(rec["choice_B"]).strip())
           .replace("$C_C$", str(rec["choice_C"]).strip())
           .replace("$C_D$", str(rec["choice_D"]).strip()))
    if cot is not None:
        out = out.replace("$COT$", cot)
    return out


def extract_answer(response: str) -> str | None:
    """LongBench v2's ``extract_answer``: the letter of "The correct answer is (X)" or "... X".

    Case-sensitive, as the original: "the correct answer is (b)" is None (wrong).
    """
    response = response.replace("*", "")
    m = re.search(r"The correct answer is \(([A-D])\)", response)
    if m:
        return m.group(1)
    m = re.search(r"The correct answer is ([A-D])", response)
    return m.group(1) if m else None


def extract_choice(prediction: str) -> str | None:
    """A lenient letter pick (the first standalone A-D, any case). Not the official scorer."""
    m = re.search(r"\b([ABCD])\b", prediction.strip().upper())
    return m.group(1) if m else None


def _bucket(row: dict, key: str, allowed: tuple[str, ...], meta: dict | None) -> str | None:
    for src in (row, (row.get("metadata") or {}), meta or {}):
        v = src.get(key)
        if isinstance(v, str) and v in allowed:
            return v
    return None


def longbench_v2_breakdown(results: Iterable[dict], records: dict[str, dict] | None = None,
                           compensated: bool = False) -> dict:
    """Accuracy overall, by difficulty (easy/hard) and by length (short/medium/long).

    Each result is a dict with the sample's score (``score`` in [0, 1], or the official
    output's ``judge``) and its buckets: ``difficulty`` and ``length`` (a bucket name; the
    runner's integer ``length`` is ignored), or ``length_bucket``, or a ``metadata`` dict with
    them, or, through ``records`` (``{_id: record}``), the record of its ``sample_id``/``_id``.
    ``compensated=True`` counts a result whose ``pred`` is None (or whose ``prediction`` yields
    no answer) as 0.25, as ``result.py``'s option does.

    Returns ``{"overall": A, "difficulty": {"easy": A, "hard": A}, "length": {"short": A,
    "medium": A, "long": A}, "unbucketed": {"difficulty": n, "length": n}}`` where each ``A``
    is `topkattn.tasks.stats.accuracy` (``n``, ``correct``, ``accuracy``, ``ci95``). Unlike
    ``result.py`` (whose medium test reads ``== "short"``, so medium questions are counted as
    long and "Medium" divides by zero), medium is its own bucket.
    """
    records = records or {}
    overall: list[float] = []
    by_diff: dict[str, list[float]] = {d: [] for d in DIFFICULTIES}
    by_len: dict[str, list[float]] = {b: [] for b in LENGTHS}
    missing = {"difficulty": 0, "length": 0}
    for row in results:
        if "score" in row:
            s = float(row["score"])
        elif "judge" in row:
            s = float(bool(row["judge"]))
        else:
            raise InputError(f"result row {row.get('sample_id', row.get('_id'))!r} has neither "
                             "'score' nor 'judge'")
        if compensated:
            if "pred" in row and row["pred"] is None:
                s = 0.25
            elif "pred" not in row and "prediction" in row:
                pfx = (row.get("metadata") or {}).get("answer_prefix", "")
                if extract_answer(pfx + str(row["prediction"])) is None:
                    s = 0.25
        meta = records.get(str(row.get("sample_id", row.get("_id"))))
        overall.append(s)
        d = _bucket(row, "difficulty", DIFFICULTIES, meta)
        b = _bucket(row, "length_bucket", LENGTHS, meta) or _bucket(row, "length", LENGTHS, meta)
        if d:
            by_diff[d].append(s)
        else:
            missing["difficulty"] += 1
        if b:
            by_len[b].append(s)
        else:
            missing["length"] += 1
    return {
        "overall": accuracy(overall),
        "difficulty": {d: accuracy(v) for d, v in by_diff.items()},
        "length": {b: accuracy(v) for b, v in by_len.items()},
        "unbucketed": missing,
    }


@dataclass
class LongBenchV2Task(Task):
    """LongBench v2 multiple-choice questions read from ``path``.

    `samples` takes ``n`` records (shuffled by ``seed``; all of them when ``n`` exceeds the
    file) and fits each to ``length`` tokens. ``depth`` is None: there is no single needle.

    Attributes:
        cot: the chain-of-thought prompt (two turns; see the module docstring).
        answer_prefix: end the 0-shot prompt with ``The correct answer is (`` (ignored with
            ``cot``).
        truncation: ``"prompt"`` (``pred.py``: first and last halves of the whole prompt) or
            ``"context"`` (the document's middle only).
        compensated: score a missing answer 0.25 in `breakdown` (``result.py``'s option).
    """

    path: str = ""
    name: str = "longbench_v2"
    cot: bool = False
    answer_prefix: bool = True
    truncation: str = "prompt"
    compensated: bool = False
    max_new_tokens: int = 0  # set in __post_init__: 4 with the prefix, 128 without, 1024 CoT
    followup_max_new_tokens: int = 128
    _records: list[dict] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATIONS:
            raise InputError(f"truncation must be one of {list(TRUNCATIONS)}, got "
                             f"{self.truncation!r}")
        if self.cot and self.name == "longbench_v2":
            self.name = "longbench_v2_cot"
        if not self.max_new_tokens:
            self.max_new_tokens = 1024 if self.cot else (4 if self.answer_prefix else 128)

    @property
    def prefix(self) -> str:
        """The answer prefix the prompt ends with ("" with ``cot`` or ``answer_prefix=False``)."""
        return "" if self.cot or not self.answer_prefix else ANSWER_PREFIX

    def records(self) -> list[dict]:
        if self._records is None:
            recs = read_records(self.path)
            check_fields(recs, REQUIRED, self.path, "LongBench v2")
            self._records = recs
        return self._records

    def samples(self, tokenizer: TokenizerLike, length: int, n: int, seed: int,
                max_length: int | None = None) -> list[Sample]:
        check_length(length, max_length)
        template = TEMPLATE_COT if self.cot else TEMPLATE_0SHOT
        prefix = self.prefix
        out = []
        for i, r in seeded_pick(self.records(), n, seed):
            if self.truncation == "prompt":  # pred.py: cut the whole user message
                prompt, n_tok, user = fit_text(
                    tokenizer, fill(template, r, doc=str(r["context"])), length,
                    lambda u: render_prompt(tokenizer, u, prefix)[0])
            else:  # cut the document only
                prompt, n_tok, doc = fit_text(
                    tokenizer, str(r["context"]).strip(), length,
                    lambda ctx, r=r: render_prompt(tokenizer, fill(template, r, doc=ctx),
                                                   prefix)[0])
                user = fill(template, r, doc=doc)
            messages = render_prompt(tokenizer, user, prefix)[1]
            answer = str(r["answer"]).strip().strip("()").upper()
            out.append(Sample(
                id=str(r.get("_id", f"lbv2-{i}")), task=self.name, prompt=prompt,
                answers=(answer,), length=length, depth=None, n_tokens=n_tok,
                messages=messages,
                metadata={"domain": r.get("domain"), "sub_domain": r.get("sub_domain"),
                          "difficulty": r.get("difficulty"), "length_bucket": r.get("length"),
                          "answer_prefix": prefix, "cot": self.cot, "record": i},
            ))
        return out

    def score(self, prediction: str, sample: Sample) -> float:
        """1.0 when the official `extract_answer` of (answer prefix + prediction) is right."""
        pfx = sample.metadata.get("answer_prefix", "")
        return float(extract_answer(pfx + prediction) == sample.answers[0])

    def followup(self, tokenizer: TokenizerLike, sample: Sample, prediction: str) -> str | None:
        """With ``cot``: turn 2's prompt (``0shot_cot_ans.txt``, no document); else None."""
        if not self.cot:
            return None
        rec = self.records()[int(sample.metadata["record"])]
        return render_prompt(tokenizer, fill(TEMPLATE_COT_ANS, rec, cot=prediction.strip()))[0]

    def breakdown(self, rows: list[dict]) -> dict:
        """`longbench_v2_breakdown` of ``rows`` (buckets looked up in the file by sample id)."""
        recs = {str(r.get("_id", f"lbv2-{i}")): r for i, r in enumerate(self.records())}
        return longbench_v2_breakdown(rows, recs, compensated=self.compensated)

