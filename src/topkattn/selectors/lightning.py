"""``lightning``: a DeepSeek-V3.2-style Lightning Indexer added to any model.

DeepSeek Sparse Attention (DeepSeek-V3.2-Exp, 2025) scores every cached token s for a query t
with a small multi-head ReLU indexer

    I(t, s) = sum_h w_{t,h} * ReLU(q_{t,h} . k_s)

where the indexer heads are few and narrow (here 4 x 64 by default), there is one indexer key
per token shared by all heads (MQA), and the ``topk`` tokens by I(t, s) are attended to.
Indexer queries and head weights come from the layer's input hidden states
(``query_source="hidden"``, so ``needs_hidden_states`` is True) or from the layer's own
queries (``"query"``).

Difference from DeepSeek: the indexer key of a token is computed from that token's cached
model keys (all KV heads concatenated, after RoPE, so it carries position), not from its hidden
state. Any cached position's indexer key can then be recomputed from the KV cache alone, which
keeps the indexer consistent however the cache is copied or branched (the evaluation runner
deep-copies a prefilled cache and decodes several branches from it) and lets a selector that
was not active during the (dense) prefill index the prompt at its first decode step.
Indexer keys are kept in ``ctx.store`` and computed for new positions only; stored positions
are validated against fingerprints of the cached keys.

The indexer is trained by `topkattn.train.indexer` (base model frozen, KL divergence to the
model's own dense attention) and saved/loaded with `LightningIndexer.save` / `.load`
(safetensors, or torch.save for a ``.pt`` path).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from topkattn.selectors._common import PrefixStore, check_int, fingerprint
from topkattn.selectors.base import ScoreSelector, SelectionContext
from topkattn.errors import InputError, MissingFileError

QUERY_SOURCES = ("hidden", "query")


@dataclass
class IndexerConfig:
    """Shape of a Lightning Indexer for one model.

    Attributes:
        n_layers: decoder layers (one indexer layer each).
        q_in: width of the indexer's query input (hidden size, or Hq * head_dim for "query").
        kv_dim: Hkv * head_dim of the model's keys (input of the indexer key projection).
        n_heads: indexer heads. head_dim: indexer head width.
        query_source: "hidden" (layer input hidden states) or "query" (the layer's queries).
    """

    n_layers: int
    q_in: int
    kv_dim: int
    n_heads: int = 4
    head_dim: int = 64
    query_source: str = "hidden"

    def __post_init__(self) -> None:
        for name in ("n_layers", "q_in", "kv_dim", "n_heads", "head_dim"):
            setattr(self, name, check_int(name, getattr(self, name), 1))
        if self.query_source not in QUERY_SOURCES:
            raise InputError(
                f"query_source must be one of {QUERY_SOURCES}, got {self.query_source!r}"
            )


class IndexerLayer(nn.Module):
    """One layer's indexer: I(t, s) = H^-1/2 * sum_h w_{t,h} ReLU(d^-1/2 q_{t,h} . k_s)."""

    def __init__(self, cfg: IndexerConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.q_in, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.kv_dim, cfg.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(cfg.head_dim, eps=1e-6)
        self.weights_proj = nn.Linear(cfg.q_in, cfg.n_heads, bias=False)

    def keys(self, k: torch.Tensor) -> torch.Tensor:
        """Model keys k [B, Hkv, L, D] -> indexer keys [B, L, head_dim] (fp32)."""
        B, H, L, D = k.shape
        x = k.to(self.wk.weight.dtype).transpose(1, 2).reshape(B, L, H * D)
        return self.k_norm(self.wk(x)).float()

    def queries(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, Lq, q_in] -> (q [B, Lq, n_heads, head_dim], w [B, Lq, n_heads]) fp32."""
        x = x.to(self.wq.weight.dtype)
        B, Lq, _ = x.shape
        q = self.wq(x).view(B, Lq, self.n_heads, self.head_dim).float()
        w = self.weights_proj(x).float() * self.n_heads**-0.5
        return q, w

    def scores(self, q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """q [B, Lq, H, d], w [B, Lq, H], keys [B, L, d] -> index scores [B, Lq, L] fp32."""
        s = torch.relu(torch.einsum("bqhd,bld->bqhl", q, keys) * self.head_dim**-0.5)
        return torch.einsum("bqh,bqhl->bql", w, s)


class LightningIndexer(nn.Module):
    """Indexer layers for every decoder layer of a model (trained separately from it)."""

    def __init__(self, cfg: IndexerConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(IndexerLayer(cfg) for _ in range(cfg.n_layers))

    @classmethod
    def for_model(cls, model, n_heads: int = 4, head_dim: int = 64,
                  query_source: str = "hidden") -> "LightningIndexer":
        """An untrained indexer shaped for a Hugging Face causal LM."""
        c = model.config
        hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        hkv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        q_in = c.hidden_size if query_source == "hidden" else c.num_attention_heads * hd
        cfg = IndexerConfig(n_layers=c.num_hidden_layers, q_in=q_in, kv_dim=hkv * hd,
                            n_heads=n_heads, head_dim=head_dim, query_source=query_source)
        p = next(model.parameters())
        return cls(cfg).to(device=p.device, dtype=torch.float32)

    def save(self, path: str | Path) -> Path:
        """Write weights and config: safetensors (config in the metadata) or torch.save
        (``.pt``/``.pth``/``.bin``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if path.suffix in (".pt", ".pth", ".bin"):
            torch.save({"config": asdict(self.cfg), "state_dict": state}, path)
        else:
            from safetensors.torch import save_file

            save_file(state, str(path), metadata={"indexer_config": json.dumps(asdict(self.cfg))})
        return path

    @classmethod
    def load(cls, path: str | Path, device=None) -> "LightningIndexer":
        """Read an indexer written by `save`. Raises FileNotFoundError for a missing path."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"indexer weights {str(path)!r} not found")
        if path.suffix in (".pt", ".pth", ".bin"):
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
                cfg, state = IndexerConfig(**blob["config"]), blob["state_dict"]
            except Exception as e:  # noqa: BLE001  (any unreadable file: one line)
                raise InputError(f"{str(path)!r} is not an indexer file written by train-indexer "
                                 f"({type(e).__name__})") from None
        else:
            from safetensors import safe_open
            from safetensors.torch import load_file

            try:
                with safe_open(str(path), "pt") as f:
                    meta = f.metadata() or {}
            except Exception as e:  # noqa: BLE001  (SafetensorError, OSError: one line)
                raise InputError(f"{str(path)!r} is not a safetensors file ({str(e)[:80]}); give "
                                 "indexer weights written by train-indexer") from None
            if "indexer_config" not in meta:
                raise InputError(f"{str(path)!r} has no indexer_config metadata; not an indexer file")
            cfg, state = IndexerConfig(**json.loads(meta["indexer_config"])), load_file(str(path))
        ind = cls(cfg)
        ind.load_state_dict(state)
        return ind.to(device) if device is not None else ind


@dataclass(frozen=True)
class LightningSelector(ScoreSelector):
    """Top-k by a Lightning Indexer's scores (one set per query row, shared by all heads).

    Attributes:
        path: indexer weights to load (spec ``lightning:runs/indexer.safetensors``).
        indexer: an in-memory `LightningIndexer` (wins over ``path``). With neither, an
            untrained (random) indexer is made at the first call, with a warning.
        n_heads, head_dim, query_source: shape of that untrained indexer.
        seed: seed of the untrained indexer's initialisation.
    """

    path: str | None = None
    indexer: LightningIndexer | None = None
    n_heads: int = 4
    head_dim: int = 64
    query_source: str = "hidden"
    seed: int = 0
    # the untrained indexer made at the first call when neither path nor indexer is given: a
    # lazily built cache, not a setting (outside init, repr and comparison; set through
    # object.__setattr__ since the selector is frozen)
    _random_indexer: LightningIndexer | None = field(default=None, init=False, repr=False,
                                                     compare=False)

    def __post_init__(self) -> None:
        if self.indexer is None and self.path is not None:
            object.__setattr__(self, "indexer", LightningIndexer.load(self.path))
        if self.indexer is not None:
            if not isinstance(self.indexer, LightningIndexer):
                raise InputError(f"indexer must be a LightningIndexer, got {type(self.indexer).__name__}")
            object.__setattr__(self, "query_source", self.indexer.cfg.query_source)
        if self.query_source not in QUERY_SOURCES:
            raise InputError(
                f"query_source must be one of {QUERY_SOURCES}, got {self.query_source!r}"
            )

    @property
    def needs_hidden_states(self) -> bool:  # type: ignore[override]
        return self.query_source == "hidden"

    def _layer(self, q: torch.Tensor, k: torch.Tensor, ctx: SelectionContext) -> IndexerLayer:
        indexer = self.indexer if self.indexer is not None else self._random_indexer
        if indexer is None:
            warnings.warn("lightning selector without trained weights: using a random "
                          "indexer (train one with `topkattn train-indexer`)", stacklevel=3)
            B, Hq, Lq, D = q.shape
            q_in = (ctx.hidden_states.shape[-1] if self.query_source == "hidden" else Hq * D)
            mcfg = getattr(ctx.module, "config", None)
            n_layers = getattr(mcfg, "num_hidden_layers", None) or max(64, (ctx.layer_idx or 0) + 1)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                indexer = LightningIndexer(IndexerConfig(
                    n_layers=n_layers, q_in=q_in, kv_dim=k.shape[1] * D,
                    n_heads=self.n_heads, head_dim=self.head_dim, query_source=self.query_source))
            object.__setattr__(self, "_random_indexer", indexer)
        if indexer.layers[0].wq.weight.device != q.device:
            indexer.to(q.device)
        li = 0 if ctx.layer_idx is None else ctx.layer_idx
        if li >= len(indexer.layers):
            raise InputError(
                f"layer_idx {li} out of range: the indexer has {len(indexer.layers)} layers"
            )
        return indexer.layers[li]

    def index_keys(self, layer: IndexerLayer, k: torch.Tensor, store: dict) -> torch.Tensor:
        """Indexer keys of all cached positions [B, Lk, d], new positions computed only."""
        B, Lk = k.shape[0], k.shape[2]
        fp_now = fingerprint(k)
        st: PrefixStore | None = store.get("lightning")
        if st is None or st.data.shape[0] != B or st.data.shape[-1] != layer.head_dim:
            st = PrefixStore.empty(B, (layer.head_dim,), k.device)
        nv = st.valid_prefix(fp_now)
        st.truncate(nv)
        if Lk > nv:
            st.append(layer.keys(k[:, :, nv:]), fp_now[:, nv:])
        store["lightning"] = st
        return st.data

    @torch.no_grad()
    def scores(self, q: torch.Tensor, k: torch.Tensor, ctx: SelectionContext) -> torch.Tensor:
        """Index scores [B, Lq, Lk] (fp32) for queries q [B, Hq, Lq, D] over keys k."""
        layer = self._layer(q, k, ctx)
        keys = self.index_keys(layer, k, ctx.store)
        if self.query_source == "hidden":
            if ctx.hidden_states is None:
                raise InputError("the lightning selector needs the layer's hidden states "
                                 "(ctx.hidden_states is None; use it through sparsify)")
            x = ctx.hidden_states[:, -q.shape[2]:]
        else:
            B, Hq, Lq, D = q.shape
            x = q.transpose(1, 2).reshape(B, Lq, Hq * D)
        iq, w = layer.queries(x)
        return layer.scores(iq, w, keys)

    def score(self, q: torch.Tensor, k: torch.Tensor, ctx: SelectionContext) -> torch.Tensor:
        """Index scores [B, 1, Lq, Lk]: one ranking shared by all heads."""
        return self.scores(q, k, ctx)[:, None]

    # -- the fast decode path over key ranges (see `Selector.range_indices`) ---------------

    def _key_cache(self, layer: IndexerLayer, k: torch.Tensor, end: int, store: dict,
                   ) -> RangeKeyCache:
        """This layer's indexer key cache, holding at least k's positions, with positions
        [0, end) computed from k (host-side bookkeeping only: no synchronisation)."""
        B, _, cap, _ = k.shape
        kc: RangeKeyCache | None = store.get("lightning_ranges")
        if kc is None or kc.keys.shape[0] != B or kc.keys.shape[2] != layer.head_dim:
            kc = RangeKeyCache(torch.zeros(B, 0, layer.head_dim, device=k.device))
        if kc.keys.shape[1] < cap:
            if _capturing(k):
                raise InputError(
                    "the lightning selector's key cache cannot grow while a CUDA graph is "
                    "captured or torch.compile traces: prefill through sparsify (or run one "
                    "eager decode step) first")
            grown = torch.zeros(B, max(cap, 2 * kc.keys.shape[1]), layer.head_dim, device=k.device)
            grown[:, :kc.keys.shape[1]] = kc.keys  # decoded slots past `filled` included
            kc.keys = grown
        end = min(end, cap)
        if end > kc.filled:
            kc.keys[:, kc.filled:end] = layer.keys(k[:, :, kc.filled:end])
            kc.filled = end
        store["lightning_ranges"] = kc
        return kc

    def observe_prefill(self, q: torch.Tensor, k: torch.Tensor, end: int,
                        ctx: SelectionContext) -> None:
        """Index the filled positions [0, end) of the cache k [B, Hkv, cap, D]."""
        with torch.no_grad():
            self._key_cache(self._layer(q, k, ctx), k, end, ctx.store)

    def prepare_range_graph(self, q: torch.Tensor, k: torch.Tensor,
                            ctx: SelectionContext) -> tuple:
        """The indexer key cache grown to the buffer's capacity k.shape[2] (and, without a
        prefill seen, every slot before the last indexed, as `range_indices` would), so a
        captured `range_indices` only writes its own slot; identified by its address, shape
        and the indexer layer."""
        with torch.no_grad():
            layer = self._layer(q, k, ctx)
            kc = self._decode_key_cache(layer, k, ctx.store)
        return (kc.keys.data_ptr(), tuple(kc.keys.shape), id(layer))

    def _decode_key_cache(self, layer: IndexerLayer, k: torch.Tensor, store: dict
                          ) -> RangeKeyCache:
        """The key cache a decode step over k [B, Hkv, cap, D] reads: a prefill seen through
        `observe_prefill` indexed the prompt, and every decode step writes its own slot;
        without one, every position before the new one is indexed now."""
        seen = "lightning_ranges" in store
        return self._key_cache(layer, k, 0 if seen else k.shape[2] - 1, store)

    @torch.no_grad()
    def range_indices(self, q: torch.Tensor, k: torch.Tensor, starts: torch.Tensor,
                      ends: torch.Tensor, ctx: SelectionContext) -> torch.Tensor | None:
        """int32 [B, Hkv, 1, min(topk, cap)]: the top-k positions of each sequence's range by
        the index scores, one set shared by all heads (-1: padding).

        The new token's indexer key (slot ends - 1) is written into the key cache on the
        device. The prompt was indexed by `observe_prefill`; without a prefill seen there,
        every position before the new one is indexed first. Then the index-score kernel and
        the radix selection run over [starts, ends)."""
        if q.shape[2] != 1:
            return None
        from topkattn.ops.topk.custom_ops import index_topk

        B, Hkv, cap, D = k.shape
        layer = self._layer(q, k, ctx)
        kc = self._decode_key_cache(layer, k, ctx.store)
        slot = (ends.long() - 1).clamp(0, cap - 1)  # [B]: the new token's key slot
        new = k.gather(2, slot.view(B, 1, 1, 1).expand(B, Hkv, 1, D))
        kc.keys[torch.arange(B, device=k.device), slot] = layer.keys(new)[:, 0]
        if self.query_source == "hidden":
            if ctx.hidden_states is None:
                raise InputError("the lightning selector needs the layer's hidden states "
                                 "(ctx.hidden_states is None; use it through sparsify)")
            x = ctx.hidden_states[:, -1:]
        else:
            x = q.transpose(1, 2).reshape(B, 1, -1)
        iq, w = layer.queries(x)  # [B, 1, H, d], [B, 1, H]
        kk = min(ctx.topk, cap)
        idx = index_topk()(iq[:, 0] * layer.head_dim**-0.5, w[:, 0], kc.keys[:, :cap],
                           starts, ends, kk)  # int32 [B, kk]
        return idx.view(B, 1, 1, kk).expand(B, Hkv, 1, kk)


@dataclass
class RangeKeyCache:
    """Indexer keys [B, cap, head_dim] (fp32) of one layer's cache positions, the first
    ``filled`` computed from the model keys on the host's schedule; later slots are written
    by the decode steps themselves (on the device)."""

    keys: torch.Tensor
    filled: int = 0


def _capturing(t: torch.Tensor) -> bool:
    return torch.compiler.is_compiling() or (t.is_cuda and torch.cuda.is_current_stream_capturing())


__all__ = ["IndexerConfig", "IndexerLayer", "LightningIndexer", "LightningSelector",
           "QUERY_SOURCES"]
