"""Training a Lightning Indexer by distillation from the frozen model's own attention.

DeepSeek-V3.2-Exp trains its indexer with the base model frozen ("dense warm-up"): for a query
t the target is the model's attention distribution over the cached tokens, summed over heads
and L1-normalised, p_t = (1/H) sum_h softmax_h(t, :); the indexer is fitted by
KL(p_t || softmax(I_t)). In the sparse stage the KL is restricted to the indexer's own selected
set S_t (top-k of I_t), both distributions renormalised over S_t (``restrict_topk``).

Recipe here (CPU friendly): one dense forward per training sequence records, per layer, the
model keys (post-RoPE) of all positions, the indexer inputs (hidden states or queries) and the
target distributions of ``rows`` sampled query positions (half of them the last positions of the
prompt, which look like decode steps, half uniform over the second half). Then all layers'
indexers are fitted on those records for ``steps`` Adam steps. Weights are saved apart from the
model (`LightningIndexer.save`).

Resumable: next to ``out`` (``runs/indexer.safetensors`` -> ``runs/indexer.parts/``) each
recorded sequence is kept in its own file as soon as it is recorded, and the fit (indexer,
Adam and schedule state, losses) every ``checkpoint_every`` steps and on Ctrl-C, each written
to a temporary file and renamed (a kill leaves the old file or the new one, never half of
one). A rerun with the same settings records only the missing sequences and fits from the
last saved step, to the same weights as an uninterrupted run; a rerun of a finished run does
nothing and says so; other settings are refused (`topkattn.analysis.resume.check_settings`).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from topkattn.selectors._common import check_float, check_int
from topkattn.selectors.lightning import QUERY_SOURCES, LightningIndexer
from topkattn.errors import InputError

CAPTURE_NAME = "topkattn_capture"
_REC_ATTR = "_topkattn_capture"


@dataclass
class IndexerTrainConfig:
    """What `train_indexer` does.

    Attributes:
        tasks: synthetic task names whose prompts are the training text.
        length: prompt length in tokens. samples: sequences per task. seed: data/RNG seed
            (use one different from evaluation).
        rows: query rows per sequence whose attention is distilled.
        n_heads, head_dim, query_source: indexer shape (DeepSeek uses 64 heads x 128; 4 x 64
            is the default here).
        steps, lr: Adam steps over the recorded data and learning rate.
        restrict_topk: 0 = dense KL over all visible tokens; > 0 = KL restricted to the
            indexer's top-``restrict_topk`` set (DeepSeek's sparse stage).
        out: where to save the indexer (.safetensors, or .pt for torch.save).
        checkpoint_every: save the fit's state every this many steps (0: only on Ctrl-C).
    """

    out: str = "runs/indexer.safetensors"
    tasks: tuple[str, ...] = ("niah_multikey", "passkey", "vartrack", "kv")
    length: int = 1024
    samples: int = 2
    seed: int = 1234
    rows: int = 64
    n_heads: int = 4
    head_dim: int = 64
    query_source: str = "hidden"
    steps: int = 200
    lr: float = 3e-3
    restrict_topk: int = 0
    log_every: int = 20
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        for name in ("length", "samples", "rows", "n_heads", "head_dim", "steps"):
            setattr(self, name, check_int(name, getattr(self, name), 1))
        self.checkpoint_every = check_int("checkpoint_every", self.checkpoint_every, 0)
        self.restrict_topk = check_int("restrict_topk", self.restrict_topk, 0)
        self.lr = check_float("lr", self.lr, 1e-8, 10.0)
        if self.query_source not in QUERY_SOURCES:
            raise InputError(f"query_source must be one of {QUERY_SOURCES}, got {self.query_source!r}")
        if isinstance(self.tasks, str):
            self.tasks = tuple(t for t in self.tasks.split(",") if t)
        if not self.tasks:
            raise InputError("tasks must name at least one task")
        from topkattn.tasks import get_task

        for t in self.tasks:
            get_task(t)  # names an unknown task and the allowed ones, before any load


@dataclass
class LayerRecord:
    """One layer of one sequence: keys [1, Hkv, L, D], inputs x [1, R, q_in], target
    distributions p [1, R, L] (zero beyond each row's position), row positions [R]."""

    keys: torch.Tensor
    x: torch.Tensor
    p: torch.Tensor
    pos: torch.Tensor


@dataclass
class IndexerTrainResult:
    out: Path
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    sequences: int = 0
    #: sequences recorded and steps fitted by this call (less than all on a resumed run)
    recorded: int = 0
    fitted: int = 0
    #: the run had finished before this call, which did nothing
    finished_before: bool = False


def _capture_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                     **kwargs):
    """Attention function that runs SDPA and records the distillation targets."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rec = getattr(module, _REC_ATTR, None)
    if rec is not None and query.shape[2] == key.shape[2]:
        B, Hq, L, D = query.shape
        G = Hq // key.shape[1]
        pos = rec["rows"]
        scale = scaling if scaling is not None else D**-0.5
        kk = key.float().repeat_interleave(G, 1) if G > 1 else key.float()
        s = torch.matmul(query[:, :, pos].float(), kk.transpose(-1, -2)) * scale  # [B,Hq,R,L]
        vis = torch.arange(L, device=query.device)[None] <= pos[:, None]  # [R, L]
        p = torch.softmax(s.masked_fill(~vis, float("-inf")), -1).mean(1)  # [B, R, L]
        if rec["query_source"] == "hidden":
            x = rec["hidden"][:, pos]
        else:
            x = query[:, :, pos].transpose(1, 2).reshape(B, len(pos), Hq * D)
        rec["out"] = LayerRecord(keys=key.detach().float().cpu(), x=x.detach().float().cpu(),
                                 p=p.detach().cpu(), pos=pos.cpu())
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, **kwargs)


@torch.no_grad()
def record_sequence(model, input_ids: torch.Tensor, rows: torch.Tensor,
                    query_source: str = "hidden") -> list[LayerRecord]:
    """One dense forward of ``input_ids`` [1, L]; per layer, the `LayerRecord` of ``rows``."""
    from topkattn.integrations.hf import attention_override

    def make_record(layer, module):
        return {"rows": rows.to(input_ids.device), "query_source": query_source}

    def on_hidden(rec, hidden):
        rec["hidden"] = hidden

    with attention_override(model, CAPTURE_NAME, _capture_forward, make_record, _REC_ATTR,
                            on_hidden) as records:
        model(input_ids=input_ids, use_cache=False)
    return [records[layer]["out"] for layer in sorted(records)]


def sample_rows(L: int, rows: int, rng: random.Random) -> torch.Tensor:
    """Half the last positions (decode-like), half uniform over the second half; sorted."""
    last = list(range(max(0, L - rows // 2), L))
    pool = [i for i in range(L // 2, L) if i not in set(last)]
    extra = rng.sample(pool, min(len(pool), rows - len(last)))
    return torch.tensor(sorted(last + extra), dtype=torch.long)


def indexer_loss(layer, rec: LayerRecord, restrict_topk: int = 0) -> torch.Tensor:
    """Mean over rows of KL(p_t || softmax(I_t)) over visible tokens (or over the indexer's
    top-``restrict_topk`` set, both renormalised there)."""
    keys = layer.keys(rec.keys)  # [1, L, d]
    iq, w = layer.queries(rec.x)  # [1, R, H, d], [1, R, H]
    logits = layer.scores(iq, w, keys)  # [1, R, L]
    L = keys.shape[1]
    vis = torch.arange(L)[None, None] <= rec.pos[None, :, None]
    p = rec.p
    if restrict_topk:
        kk = min(restrict_topk, L)
        sel_idx = logits.detach().masked_fill(~vis, float("-inf")).topk(kk, -1).indices
        sel = torch.zeros_like(vis.expand_as(logits)).scatter(-1, sel_idx, True) & vis
        vis = sel
        p = p * sel
        p = p / p.sum(-1, keepdim=True).clamp(min=1e-12)
    logq = torch.log_softmax(logits.masked_fill(~vis, float("-inf")), -1)
    kl = torch.where(p > 0, p * (torch.log(p.clamp(min=1e-30)) - logq), torch.zeros_like(p))
    return kl.sum(-1).mean()


def fit_indexer(indexer: LightningIndexer, data: list[list[LayerRecord]], steps: int,
                lr: float = 3e-3, restrict_topk: int = 0, bar=None, state: dict | None = None,
                save=None, save_every: int = 0) -> list[float]:
    """Adam on the mean over layers of `indexer_loss`, one recorded sequence per step
    (cycling), warm-up then cosine decay. Returns the loss of every step.

    ``state`` (a dict ``save`` was given) continues a fit from its step; ``save(state)`` is
    called every ``save_every`` steps and on KeyboardInterrupt (then re-raised). A step's
    update is never left half done by Ctrl-C (`topkattn.analysis.resume.deferred_sigint`).
    """
    from topkattn.analysis.resume import deferred_sigint

    opt = torch.optim.Adam(indexer.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 10) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses: list[float] = []
    if state is not None:
        indexer.load_state_dict(state["indexer"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        losses = [float(x) for x in state["losses"]]

    def snapshot() -> dict:
        return {"indexer": indexer.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict(), "losses": list(losses)}

    job = (bar.add_task("fitting indexer", total=steps, completed=len(losses))
           if bar is not None else None)
    try:
        for step in range(len(losses), steps):
            seq = data[step % len(data)]
            loss = sum(indexer_loss(indexer.layers[i], r, restrict_topk)
                       for i, r in enumerate(seq)) / len(seq)
            opt.zero_grad()
            loss.backward()
            with deferred_sigint():
                opt.step()
                sched.step()
                losses.append(loss.item())
            if save is not None and save_every and len(losses) % save_every == 0 \
                    and len(losses) < steps:
                save(snapshot())
            if bar is not None:
                bar.update(job, advance=1, description=f"fitting indexer (KL {loss.item():.3f})")
    except KeyboardInterrupt:
        if save is not None:
            save(snapshot())
        raise
    return losses


def parts_dir(out: str | Path) -> Path:
    """The folder of a run's finished parts: ``runs/indexer.safetensors`` ->
    ``runs/indexer.parts``."""
    return Path(out).with_suffix(".parts")


def _settings(cfg: IndexerTrainConfig) -> dict:
    from dataclasses import asdict

    d = asdict(cfg)
    for name in ("log_every", "checkpoint_every"):
        d.pop(name)
    return d


def check_run(cfg: IndexerTrainConfig) -> IndexerTrainResult | None:
    """Check ``cfg`` against the parts of an earlier run at ``cfg.out`` (InputError for other
    settings); returns that run's result when it had finished (nothing left to do)."""
    import json

    from topkattn.analysis.resume import check_settings

    parts = parts_dir(cfg.out)
    parts.mkdir(parents=True, exist_ok=True)
    check_settings(parts / "settings.json", _settings(cfg), "train-indexer")
    done = parts / "done.json"
    if done.exists() and Path(cfg.out).exists():
        d = json.loads(done.read_text())
        return IndexerTrainResult(out=Path(cfg.out), losses=d["losses"],
                                  sequences=d["sequences"], finished_before=True)
    return None


def _save_records(seq: list[LayerRecord], path: Path) -> None:
    from topkattn.analysis.resume import atomic_save

    obj = {name: [getattr(r, name) for r in seq] for name in ("keys", "x", "p", "pos")}
    atomic_save(lambda p: torch.save(obj, p), path)


def _load_records(path: Path) -> list[LayerRecord] | None:
    try:
        d = torch.load(path, weights_only=True)
        return [LayerRecord(*t) for t in zip(d["keys"], d["x"], d["p"], d["pos"])]
    except Exception:  # noqa: BLE001  (an unreadable part is recorded again)
        return None


def train_indexer(cfg: IndexerTrainConfig, model=None, tokenizer=None,
                  progress: bool = True) -> IndexerTrainResult:
    """Record the model's attention on task prompts and fit a Lightning Indexer to it.

    ``model``/``tokenizer`` default to the embedded model. Returns the saved path and losses.
    Resumes the run at ``cfg.out`` (see the module docstring); Ctrl-C raises
    `topkattn.analysis.resume.RunInterrupted` once the finished parts are saved.
    """
    import json

    from rich.progress import Progress

    from topkattn.analysis.resume import RunInterrupted, atomic_save
    from topkattn.tasks import get_task

    t0 = time.time()
    finished = check_run(cfg)
    if finished is not None:
        return finished
    parts = parts_dir(cfg.out)
    if model is None:
        from topkattn.models import load_model

        model, tokenizer = load_model(device="cpu")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    indexer = LightningIndexer.for_model(model, cfg.n_heads, cfg.head_dim, cfg.query_source)
    indexer.to("cpu")
    data: list[list[LayerRecord]] = []
    prompts = []
    for t in cfg.tasks:
        for s in get_task(t).samples(tokenizer, cfg.length, cfg.samples, cfg.seed):
            prompts.append(s.prompt)
    dev = next(model.parameters()).device
    recorded = 0
    fit_path = parts / "fit.pt"
    with Progress(disable=not progress, transient=True) as bar:
        job = bar.add_task("recording attention", total=len(prompts))
        try:
            for i, text in enumerate(prompts):
                ids = tokenizer(text, return_tensors="pt",
                                add_special_tokens=False).input_ids.to(dev)
                rows = sample_rows(ids.shape[1], cfg.rows, rng)  # every prompt: same rng
                part = parts / f"record-{i}.pt"
                seq = _load_records(part) if part.exists() else None
                if seq is None:
                    seq = record_sequence(model, ids, rows, cfg.query_source)
                    _save_records(seq, part)
                    recorded += 1
                data.append(seq)
                bar.advance(job)
        except KeyboardInterrupt:
            raise RunInterrupted("train-indexer (recording attention)", len(data),
                                 len(prompts), parts, unit="sequences") from None
        state = torch.load(fit_path, weights_only=True) if fit_path.exists() else None
        first = len(state["losses"]) if state is not None else 0
        saved: list[int] = []

        def save(st: dict) -> None:
            atomic_save(lambda p: torch.save(st, p), fit_path)
            saved.append(len(st["losses"]))

        try:
            losses = fit_indexer(indexer, data, cfg.steps, cfg.lr, cfg.restrict_topk, bar,
                                 state=state, save=save, save_every=cfg.checkpoint_every)
        except KeyboardInterrupt:
            raise RunInterrupted("train-indexer (fitting)", saved[-1] if saved else first,
                                 cfg.steps, fit_path, unit="steps") from None
    path = indexer.save(cfg.out)
    atomic_save(lambda p: p.write_text(json.dumps({"losses": losses, "sequences": len(data)})),
                parts / "done.json")
    for f in [fit_path, *parts.glob("record-*.pt")]:  # the weights are saved: free the space
        f.unlink(missing_ok=True)
    return IndexerTrainResult(out=path, losses=losses, seconds=time.time() - t0,
                              sequences=len(data), recorded=recorded,
                              fitted=len(losses) - first)


__all__ = ["IndexerTrainConfig", "IndexerTrainResult", "LayerRecord", "check_run", "fit_indexer",
           "indexer_loss", "parts_dir", "record_sequence", "sample_rows", "train_indexer"]
