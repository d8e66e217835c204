"""What `topkattn study` runs: a frozen `StudyConfig` holding one `Budget` (quick or full).

A budget fixes every experiment's size: tasks, lengths, k settings, sample counts, the
fine-tuning recipe of claim 2 and the decision thresholds of `topkattn.study.verdict`.
``quick`` exercises every stage on 2 CPU cores in minutes (too few samples to decide much);
``full`` has at least 100 samples per cell and is meant for a GPU. Command-line overrides
(``--lengths``, ``--samples``, ``--tasks`` ...) are applied with `StudyConfig.build`, which
validates everything before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from topkattn.errors import InputError
from topkattn.evaluation.shard import Shard

CLAIMS: tuple[int, ...] = (1, 2, 3, 4)
BUDGETS: tuple[str, ...] = ("quick", "full")


@dataclass(frozen=True)
class Claim1Budget:
    """Exact Top-k decoding vs full attention (paired on the same samples).

    Attributes:
        tasks: synthetic tasks (file benchmarks are added by ``StudyConfig.file_tasks``).
        lengths: prompt lengths in tokens.
        ratios: k as a share rho of the visible context.
        abs_ks: absolute k values, reported next to the ratios.
        samples: samples per (task, length) cell.
        max_new_tokens: answer budget (None: each task's default).
    """

    tasks: tuple[str, ...] = ("passkey", "niah_multikey", "vartrack")
    lengths: tuple[int, ...] = (2048, 4096, 8000)
    ratios: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10)
    abs_ks: tuple[int, ...] = (64,)
    samples: int = 100
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class Claim2Budget:
    """Top-k SFT vs dense SFT under Top-k decoding (same data, recipe and seeds).

    Attributes:
        train_tasks: synthetic training tasks (training seeds: disjoint from evaluation).
        train_length: prompt length of the training data in tokens.
        train_samples: training samples per task.
        train_rho: k ratio of Top-k SFT (the study's rho).
        steps, batch_size, grad_accum, lr, warmup_steps: the recipe (kept short on purpose,
            so that the tasks do not saturate).
        seeds: training seeds; each seed trains one dense and one Top-k model.
        eval_tasks: evaluation tasks; those not in ``train_tasks`` are held-out variants.
        eval_lengths: evaluation lengths (inside and beyond ``train_length``).
        eval_ratios: Top-k decoding ratios of the comparison (where Top-k costs the base).
        samples: evaluation samples per (task, length) cell.
        max_new_tokens: answer budget (None: each task's default).
    """

    train_tasks: tuple[str, ...] = ("niah_multikey", "vartrack")
    train_length: int = 2048
    train_samples: int = 160
    train_rho: float = 0.01
    steps: int = 30
    batch_size: int = 1
    grad_accum: int = 8
    lr: float = 5e-5
    warmup_steps: int = 5
    seeds: tuple[int, ...] = (0, 1)
    eval_tasks: tuple[str, ...] = ("niah_multikey", "vartrack", "passkey")
    eval_lengths: tuple[int, ...] = (2048, 4096)
    eval_ratios: tuple[float, ...] = (0.01, 0.02)
    samples: int = 100
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class Claim3Budget:
    """Fidelity of approximate top-k and downstream accuracy.

    Attributes:
        task: the synthetic task.
        lengths: prompt lengths (two or more).
        rho: k ratio of the exact reference and of every selector.
        p_values: the ``precision:p`` dial; each p < 1 also runs with ``protect``.
        protect: top keys the protected dial never swaps.
        selectors: the approximate selectors (specs of `topkattn.selectors.parse_selector`).
        samples: samples per length.
        fidelity_steps: decode steps measured per sample for precision / mass recall.
        max_new_tokens: answer budget of the downstream runs.
    """

    task: str = "niah_multikey"
    lengths: tuple[int, ...] = (2048, 4096)
    rho: float = 0.03
    p_values: tuple[float, ...] = (0.2, 0.4, 0.6, 0.75, 0.9, 1.0)
    protect: int = 1
    selectors: tuple[str, ...] = ("exact", "lightning", "quest", "spans", "window", "random")
    samples: int = 100
    fidelity_steps: int = 4
    max_new_tokens: int = 12


@dataclass(frozen=True)
class Claim4Budget:
    """Attention entropy of base, dense-SFT and Top-k-SFT on the same prompts.

    Attributes:
        task, length: the prompts.
        prompts: how many.
        decode_steps: greedy decode steps measured per prompt.
        ks: k values of the top-k entropy and mass (the first is the primary one).
    """

    task: str = "niah_multikey"
    length: int = 2048
    prompts: int = 100
    decode_steps: int = 8
    ks: tuple[str, ...] = ("1%", "64")


@dataclass(frozen=True)
class Rules:
    """Decision thresholds of `topkattn.study.verdict` (documented in docs/study.md).

    Attributes:
        alpha: two-sided error level of every interval (0.05: 95% intervals).
        margin: claim 1's non-inferiority margin (accuracy points, 0.05 = 5 points).
        informative_full: claim 1 counts a (task, length) cell only where full attention
            scores at least this (a task the model cannot do says nothing about Top-k).
        max_rho: claim 1 holds when some ratio <= this is non-inferior.
        min_gain: claim 2 is "not confirmed" when the interval excludes a gain this large.
        saturated: claim 2 warns (and cannot reject) when dense SFT under Top-k decoding
            scores at least this.
        min_corr: claim 3 is "not confirmed" when the correlation's interval lies below this.
        min_drop: claim 4 is "not confirmed" when the interval excludes an entropy drop this
            large (nats).
        min_n: fewer independent units than this (paired samples for claims 1-3, prompts for
            claim 4) decide nothing: inconclusive (a bootstrap of a handful of samples is
            not an interval).
        n_boot: bootstrap resamples.
    """

    alpha: float = 0.05
    margin: float = 0.05
    informative_full: float = 0.3
    max_rho: float = 0.10
    min_gain: float = 0.05
    saturated: float = 0.95
    min_corr: float = 0.3
    min_drop: float = 0.01
    min_n: int = 20
    n_boot: int = 2000


@dataclass(frozen=True)
class Budget:
    """Sizes of all four experiments and the decision rules."""

    name: str
    claim1: Claim1Budget
    claim2: Claim2Budget
    claim3: Claim3Budget
    claim4: Claim4Budget
    rules: Rules = field(default_factory=Rules)


FULL = Budget("full", Claim1Budget(), Claim2Budget(), Claim3Budget(), Claim4Budget())

QUICK = Budget(
    "quick",
    Claim1Budget(tasks=("passkey", "niah_multikey"), lengths=(256, 512), abs_ks=(16,),
                 samples=1, max_new_tokens=6),
    Claim2Budget(train_tasks=("niah_multikey", "vartrack"), train_length=256, train_samples=2,
                 steps=2, batch_size=1, grad_accum=1, lr=5e-5, warmup_steps=0, seeds=(0, 1),
                 eval_tasks=("niah_multikey",), eval_lengths=(256, 384),
                 eval_ratios=(0.01, 0.02), samples=1, max_new_tokens=6),
    Claim3Budget(lengths=(256, 512), p_values=(0.2, 1.0),
                 selectors=("exact", "lightning", "quest", "spans", "window", "random"),
                 samples=1, fidelity_steps=2, max_new_tokens=6),
    Claim4Budget(length=256, prompts=2, decode_steps=2, ks=("1%", "16")),
    Rules(n_boot=500),
)

_BUDGETS = {"quick": QUICK, "full": FULL}


def _lengths(text: str | tuple | list) -> tuple[int, ...]:
    from topkattn.evaluation.runner import parse_length

    items = text.split(",") if isinstance(text, str) else list(text)
    out = tuple(parse_length(x) for x in items if str(x).strip())
    if not out:
        raise InputError(f"--lengths {text!r} names no length; give e.g. 1k,2k")
    return out


def parse_claims(text: str | tuple | list) -> tuple[int, ...]:
    """``"1,3"`` -> (1, 3); InputError naming a value outside 1..4."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[int] = []
    for item in items:
        t = str(item).strip()
        if not t:
            continue
        if t not in {str(c) for c in CLAIMS}:
            raise InputError(f"--claims: {t!r} is not a claim; allowed: 1, 2, 3, 4 "
                             f"(comma-separated, e.g. 1,3)")
        if int(t) not in out:
            out.append(int(t))
    if not out:
        raise InputError(f"--claims {text!r} names no claim; allowed: 1, 2, 3, 4")
    return tuple(sorted(out))


@dataclass(frozen=True)
class StudyConfig:
    """One study run (validated by `build`).

    Attributes:
        model: the base model ("default": the embedded SmolLM2-135M-Instruct, a Hub id or a
            folder).
        out: output folder (stage results, models, study.json / study.md / PNGs).
        claims: which claims to test; claim 4 reuses claim 2's fine-tunes (trained if needed).
        budget: the experiment sizes.
        seed: task seed of every evaluation (training seeds are the budget's ``seeds``).
        device: "cpu", "cuda", "cuda:N" or None (CUDA when available).
        file_tasks: LongBench v2 / HELMET task specs added to claim 1 (``longbench_v2:PATH``).
        progress: rich progress bars.
        batch_size: samples per forward of the evaluations (claims 1 and 2,
            `topkattn.evaluation.EvalConfig.batch_size`); None: `EVAL_BATCH_CUDA` on a CUDA
            device, 1 elsewhere. Results do not depend on it (no stage key holds it).
        shard: this process's part of the samples of every stage but training (claims 1 to 4),
            for several processes sharing ``out`` (`topkattn.evaluation.shard`); no stage key
            holds it either.
    """

    model: str = "default"
    out: Path = Path("runs/study")
    claims: tuple[int, ...] = CLAIMS
    budget: Budget = QUICK
    seed: int = 0
    device: str | None = None
    file_tasks: tuple[str, ...] = ()
    progress: bool = True
    batch_size: int | None = None
    shard: Shard = field(default_factory=Shard)

    @classmethod
    def build(cls, model: str = "default", out: str | Path = "runs/study",
              claims: str | tuple = "1,2,3,4", budget: str = "quick", seed: int = 0,
              device: str | None = None, lengths: str | None = None,
              samples: int | None = None, tasks: str | None = None,
              file_tasks: str | tuple = (), max_new_tokens: int | None = None,
              steps: int | None = None, seeds: str | None = None,
              progress: bool = True, batch_size: int | None = None,
              shard: "str | Shard | None" = None) -> "StudyConfig":
        """Validate the options and apply the overrides to the named budget.

        ``lengths`` replaces claim 1's and claim 3's lengths; ``samples`` every sample count
        (claim 4's prompts too); ``tasks`` claim 1's tasks; ``max_new_tokens`` every answer
        budget; ``steps`` and ``seeds`` claim 2's recipe; ``batch_size`` the evaluations'
        samples per forward (None: `eval_batch_size`'s choice); ``shard`` ``"i/n"`` this
        process's part of the evaluations (None: all of it). Raises `InputError` (one line,
        naming the value) before any work.
        """
        from topkattn.devices import check_device
        from topkattn.tasks import ALL_TASK_NAMES, get_task

        if budget not in _BUDGETS:
            raise InputError(f"--budget {budget!r} is not a budget; allowed: quick, full")
        b = _BUDGETS[budget]
        if not isinstance(model, str) or not model.strip():
            raise InputError(f"--model must name a model ('default', a Hub id or a folder), "
                             f"got {model!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"--seed must be an integer >= 0, got {seed!r}")
        if device is not None:
            check_device(device)
        c1, c2, c3, c4 = b.claim1, b.claim2, b.claim3, b.claim4
        if lengths is not None:
            ls = _lengths(lengths)
            if len(ls) < 2 and 3 in parse_claims(claims):
                raise InputError(f"--lengths {lengths!r}: claim 3 needs two lengths or more")
            c1, c3 = replace(c1, lengths=ls), replace(c3, lengths=ls)
        for name, v, lo in (("--samples", samples, 1), ("--max-new-tokens", max_new_tokens, 1),
                            ("--steps", steps, 1), ("--batch-size", batch_size, 1)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
                raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")
        if samples is not None:
            c1, c2, c3 = (replace(c, samples=samples) for c in (c1, c2, c3))
            c4 = replace(c4, prompts=samples)
        if max_new_tokens is not None:
            c1, c2, c3 = (replace(c, max_new_tokens=max_new_tokens) for c in (c1, c2, c3))
        if steps is not None:
            c2 = replace(c2, steps=steps, warmup_steps=min(c2.warmup_steps, steps))
        if seeds is not None:
            try:
                sd = tuple(dict.fromkeys(int(s) for s in str(seeds).split(",") if s.strip()))
            except ValueError:
                raise InputError(f"--train-seeds must be comma-separated integers >= 0, got "
                                 f"{seeds!r}") from None
            if len(sd) < 2 or any(s < 0 for s in sd):
                raise InputError(f"--train-seeds must name two or more integers >= 0 (each "
                                 f"arm of claim 2 trains once per seed), got {seeds!r}")
            c2 = replace(c2, seeds=sd)
        if tasks is not None:
            ts = tuple(t.strip() for t in tasks.split(",") if t.strip())
            bad = [t for t in ts if t not in ALL_TASK_NAMES]
            if not ts or bad:
                raise InputError(f"--tasks: unknown task {', '.join(bad) or tasks!r}; allowed: "
                                 f"{', '.join(ALL_TASK_NAMES)} (files go to --file-tasks)")
            c1 = replace(c1, tasks=ts)
        ft = tuple(t.strip() for t in (file_tasks.split(",") if isinstance(file_tasks, str)
                                       else file_tasks) if t.strip())
        for spec in ft:
            if ":" not in spec:
                raise InputError(f"--file-tasks: {spec!r} is not a file task; give "
                                 "longbench_v2:PATH, longbench_v2_cot:PATH or "
                                 "helmet:<category>[@<setting>]:PATH")
            task = get_task(spec)  # names an unknown benchmark or category
            path = getattr(task, "path", None)
            if path is not None and not Path(path).exists():
                raise InputError(f"--file-tasks: {str(path)!r} of {spec!r} does not exist")
        part = Shard() if shard is None or shard == "" else Shard.parse(shard)
        cfg = cls(model=model.strip(), out=Path(out), claims=parse_claims(claims),
                  budget=replace(b, claim1=c1, claim2=c2, claim3=c3, claim4=c4), seed=seed,
                  device=device, file_tasks=ft, progress=progress, batch_size=batch_size,
                  shard=part)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Cross-field checks: claim 2's lengths, claim 3's two lengths, positive sizes."""
        c2, c3 = self.budget.claim2, self.budget.claim3
        if len(c2.seeds) < 1:
            raise InputError("claim 2 needs at least one training seed")
        if 3 in self.claims and len(c3.lengths) < 2:
            raise InputError(f"claim 3 needs two lengths or more, got {list(c3.lengths)}")
        for r in self.budget.claim1.ratios + c2.eval_ratios + (c2.train_rho, c3.rho):
            if not 0 < r <= 1:
                raise InputError(f"k ratios must lie in (0, 1], got {r!r}")

    def eval_batch_size(self, device) -> int:
        """Samples per forward of an evaluation on ``device`` (a torch.device): `batch_size`,
        or when None `EVAL_BATCH_CUDA` on CUDA and 1 elsewhere (a CPU gains nothing)."""
        if self.batch_size is not None:
            return self.batch_size
        return EVAL_BATCH_CUDA if getattr(device, "type", str(device)) == "cuda" else 1

    @property
    def claim1_tasks(self) -> tuple[str, ...]:
        return self.budget.claim1.tasks + self.file_tasks

    @property
    def needs_finetunes(self) -> bool:
        return 2 in self.claims or 4 in self.claims

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return json.loads(json.dumps(d))

    def key(self, *parts: str) -> str:
        """A short hash of the settings that decide a stage's result; a finished stage is
        reused only when it matches. ``parts`` name budget sections (``"claim1"``) or parts
        of claim 2: ``"train"`` (the recipe, without the seed list: a stage is one seed) and
        ``"eval"`` (claim 2's evaluation). The model and seed are always in; the file tasks
        with claim 1."""
        d = self.to_json()
        view: dict[str, Any] = {"model": d["model"], "seed": d["seed"]}
        c2 = d["budget"]["claim2"]
        for p in parts:
            if p == "train":
                view[p] = {f: c2[f] for f in TRAIN_FIELDS}
            elif p == "eval":
                view[p] = {f: c2[f] for f in c2 if f not in TRAIN_FIELDS + ("seeds",)}
            else:
                view[p] = d["budget"][p]
        if "claim1" in parts:
            view["file_tasks"] = d["file_tasks"]
        return hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()[:16]


#: samples per forward of the evaluations on a CUDA device when ``--batch-size`` is not given
EVAL_BATCH_CUDA = 8

#: the fields of `Claim2Budget` that make a fine-tune (its seed is the stage's own)
TRAIN_FIELDS = ("train_tasks", "train_length", "train_samples", "train_rho", "steps",
                "batch_size", "grad_accum", "lr", "warmup_steps")


def ratio_label(rho: float) -> str:
    """The eval k label of a ratio: 0.01 -> "1%"."""
    pct = rho * 100
    return f"{pct:g}%"


__all__ = ["BUDGETS", "Budget", "CLAIMS", "Claim1Budget", "Claim2Budget", "Claim3Budget",
           "Claim4Budget", "EVAL_BATCH_CUDA", "FULL", "QUICK", "Rules", "StudyConfig", "parse_claims",
           "ratio_label"]
