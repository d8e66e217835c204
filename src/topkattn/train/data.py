"""Training data for supervised fine-tuning: local JSONL files or generated synthetic tasks.

Formats of a local JSONL file (one JSON object a line):

- chat: ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}``;
  rendered with the tokenizer's chat template; loss on the assistant turns only.
- prompt/completion: ``{"prompt": ..., "completion": ...}`` (also ``answer`` or ``response``
  for the completion); the prompt is used as given (apply a chat template yourself, or write
  chat records); loss on the completion tokens only.

Synthetic training sets (``synthetic:passkey,niah_multikey@2048``) are drawn from the tasks in
`topkattn.tasks` with *training seeds*: `train_seed` maps a user seed into a range that
evaluation never uses (evaluation seeds are small integers), and the task's generator is keyed
by the seed, so a training set and an evaluation set share no sample.

Batching is length-bucketed: examples are shuffled per epoch, grouped into buckets of similar
length and cut into batches, so padding stays small; the order is a pure function of
``(seed, epoch)`` so a resumed run continues on exactly the batches it would have seen.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from topkattn.errors import InputError, MissingFileError

IGNORE_INDEX = -100
# Evaluation uses seeds far below this; training seeds start here.
TRAIN_SEED_BASE = 1_000_000


@dataclass
class Example:
    """One tokenised training sequence.

    Attributes:
        input_ids: token ids, length L.
        labels: same length; ``IGNORE_INDEX`` where no loss is taken (prompt tokens).
        source: where it came from (file line, or synthetic sample id).
    """

    input_ids: list[int]
    labels: list[int]
    source: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_loss_tokens(self) -> int:
        """Tokens that carry loss (after the one-position shift inside the model)."""
        return sum(1 for t in self.labels[1:] if t != IGNORE_INDEX)


def train_seed(seed: int) -> int:
    """The task seed used for a training set of user seed ``seed`` (disjoint from eval)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, got {seed!r}")
    return TRAIN_SEED_BASE + seed


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt_completion(tokenizer, prompt: str, completion: str, max_length: int,
                             source: str = "", add_eos: bool = True) -> Example | None:
    """Tokenise a prompt/completion pair; labels only on the completion (and EOS).

    The prompt is cut from the left when the pair is longer than ``max_length`` (the answer is
    kept whole); returns None when the completion alone does not fit.
    """
    p = _ids(tokenizer, prompt)
    c = _ids(tokenizer, completion)
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is not None:
        c = c + [eos]
    if len(c) >= max_length:
        return None
    if len(p) + len(c) > max_length:
        p = p[len(p) + len(c) - max_length:]
    return Example(p + c, [IGNORE_INDEX] * len(p) + c, source)


def encode_messages(tokenizer, messages: list[dict], max_length: int,
                    source: str = "") -> Example | None:
    """Tokenise a chat with the tokenizer's template; labels on the assistant turns only.

    Assistant spans are found by rendering growing prefixes of the conversation, which works
    with any template that renders a prefix as a prefix. Sequences longer than ``max_length``
    are truncated on the right; None when no assistant token survives.
    """
    if not getattr(tokenizer, "chat_template", None):
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        ids = _ids(tokenizer, text)
        labels = list(ids)  # no template: plain language modelling
        spans = None
    else:
        spans = []
        ids: list[int] = []
        for i, m in enumerate(messages):
            if m.get("role") not in ("system", "user", "assistant", "tool"):
                raise InputError(f"{source}: unknown message role {m.get('role')!r}")
            if m["role"] == "assistant":
                before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True,
                                                       tokenize=False)
                start = len(_ids(tokenizer, before))
            after = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            end_ids = _ids(tokenizer, after)
            if m["role"] == "assistant":
                spans.append((start, len(end_ids)))
            ids = end_ids
        labels = [IGNORE_INDEX] * len(ids)
        for s, e in spans:
            labels[s:e] = ids[s:e]
    ids, labels = ids[:max_length], labels[:max_length]
    ex = Example(ids, labels, source)
    return ex if ex.n_loss_tokens > 0 else None


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file; ValueError naming the line for a bad one."""
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"training data file {str(path)!r} does not exist")
    out = []
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{p}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise InputError(f"{p}:{n}: each line must be a JSON object")
            out.append(rec)
    if not out:
        raise InputError(f"training data file {p} holds no records")
    return out


def encode_record(tokenizer, rec: dict, max_length: int, source: str) -> Example | None:
    """One JSONL record (chat or prompt/completion) -> `Example` (None when it does not fit)."""
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            raise InputError(f"{source}: 'messages' must be a list of {{role, content}} objects")
        return encode_messages(tokenizer, msgs, max_length, source)
    comp = next((rec[k] for k in ("completion", "answer", "response") if k in rec), None)
    if "prompt" in rec and comp is not None:
        return encode_prompt_completion(tokenizer, str(rec["prompt"]), str(comp), max_length,
                                        source)
    raise InputError(
        f"{source}: a record needs 'messages' or 'prompt' + 'completion'; got keys "
        f"{sorted(rec)}"
    )


def load_jsonl_examples(tokenizer, path: str | Path, max_length: int) -> list[Example]:
    """Tokenised examples of a local JSONL file (records that do not fit are skipped)."""
    out = []
    for i, rec in enumerate(read_jsonl(path)):
        ex = encode_record(tokenizer, rec, max_length, f"{path}:{i + 1}")
        if ex is not None:
            out.append(ex)
    if not out:
        raise InputError(f"no record of {path} fits max_length={max_length} with loss tokens")
    return out


@dataclass(frozen=True)
class SyntheticSpec:
    """A synthetic training set: task names, prompt length in tokens, samples per task."""

    tasks: tuple[str, ...]
    length: int
    n: int


def parse_synthetic(spec: str, default_length: int, default_n: int) -> SyntheticSpec:
    """Parse ``synthetic:TASK[,TASK...][@LENGTH][xN]`` (e.g. ``synthetic:passkey,kv@2048x500``)."""
    m = re.fullmatch(r"synthetic:([\w,\s]+?)(?:@(\d+)(k?))?(?:x(\d+))?", spec.strip())
    if not m:
        raise InputError(
            f"bad synthetic data spec {spec!r}; expected synthetic:TASK[,TASK...][@LENGTH][xN], "
            "e.g. synthetic:passkey,niah_multikey@2048x500"
        )
    body = m.group(1)
    length = int(m.group(2)) * (1024 if m.group(3) else 1) if m.group(2) else default_length
    n = int(m.group(4)) if m.group(4) else default_n
    from topkattn.tasks import TASK_NAMES

    tasks = tuple(t.strip() for t in body.split(",") if t.strip())
    bad = [t for t in tasks if t not in TASK_NAMES]
    if not tasks or bad:
        raise InputError(f"unknown synthetic task(s) {bad or body!r}; allowed: {TASK_NAMES}")
    if length <= 0 or n <= 0:
        raise InputError(f"synthetic length and count must be > 0, got {length} and {n}")
    return SyntheticSpec(tasks, length, n)


def synthetic_records(tokenizer, spec: SyntheticSpec, seed: int) -> list[dict]:
    """Prompt/completion records of a synthetic training set (training seeds, see module doc).

    The completion is the task's answer, phrased the way the model should answer: the prompt
    ends with an answer prefix ("The pass key is"), so the answer follows after a space, as
    the model itself would write it.
    """
    from topkattn.tasks import get_task

    recs = []
    for t_i, name in enumerate(spec.tasks):
        task = get_task(name)
        # one seed per task; a spread keeps tasks' generators apart
        for s in task.samples(tokenizer, spec.length, spec.n, seed=train_seed(seed) + 7919 * t_i):
            completion = s.answer if s.prompt[-1:].isspace() else " " + s.answer
            recs.append({"prompt": s.prompt, "completion": completion, "id": s.id, "task": name})
    return recs


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """Write records to a JSONL file (parents created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return p


def load_examples(tokenizer, data: str, max_length: int, seed: int = 0,
                  synthetic_length: int | None = None, synthetic_n: int = 256) -> list[Example]:
    """Examples of a data argument: a JSONL path or a ``synthetic:...`` spec."""
    if data.startswith("synthetic:"):
        spec = parse_synthetic(data, synthetic_length or max_length, synthetic_n)
        if spec.length > max_length:
            raise InputError(
                f"synthetic length {spec.length} exceeds max_length={max_length}; raise "
                "--max-length or lower the length"
            )
        out = []
        for r in synthetic_records(tokenizer, spec, seed):
            # answers follow the prompt directly (the template's generation prompt ends it)
            ex = encode_prompt_completion(tokenizer, r["prompt"], " " + r["completion"].strip()
                                          if not r["prompt"].endswith(("\n", " ")) else
                                          r["completion"], max_length, r["id"])
            if ex is not None:
                out.append(ex)
        return out
    return load_jsonl_examples(tokenizer, data, max_length)


# --------------------------------------------------------------------------------------------
# Batching


def batch_plan(lengths: list[int], batch_size: int, seed: int, epoch: int,
               bucket_batches: int = 32) -> list[list[int]]:
    """Length-bucketed batches of example indices for one epoch (deterministic).

    Examples are shuffled by ``(seed, epoch)``, cut into buckets of ``bucket_batches`` batches,
    sorted by length inside a bucket and split into batches; the batch order is shuffled again.
    """
    rng = random.Random(f"topkattn-batches/{seed}/{epoch}")
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    batches = []
    span = batch_size * bucket_batches
    for b0 in range(0, len(idx), span):
        bucket = sorted(idx[b0:b0 + span], key=lambda i: lengths[i])
        batches.extend(bucket[i:i + batch_size] for i in range(0, len(bucket), batch_size))
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels [B, L]."""
    L = max(len(e) for e in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), L), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), L), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def describe(examples: list[Example]) -> dict[str, Any]:
    """Counts for logs: examples, tokens, loss tokens, min/mean/max length."""
    lens = [len(e) for e in examples]
    return {
        "examples": len(examples),
        "tokens": sum(lens),
        "loss_tokens": sum(e.n_loss_tokens for e in examples),
        "min_len": min(lens),
        "mean_len": round(sum(lens) / len(lens), 1),
        "max_len": max(lens),
    }
