"""The two-tier KV cache of Ltri-LLM: a transformers `Cache` that carries the offload state.

Tier 2 holds the whole KV cache of every layer: in pinned CPU memory when the model is on
CUDA (``offload="auto"`` or ``"cpu"``), position-major ([n, Hkv, D], so a span is one
contiguous block), growing by doubling. Tier 1, on the model's device, is one fixed buffer
per layer, [1, Hkv, cap, D] for keys and values, laid out as

    [ sink | pool of retrieved tokens (budget) | local window (recent + 2 (max_span + chunk)) ]

- the sink region holds positions [0, sink);
- the local window holds the positions not yet in committed spans ([local_start, n): the
  recent tokens, the open span and the current chunk), contiguous by position;
- the pool holds the tokens of the retrieved spans, one slot per token in any order
  (attention does not care about order: keys carry their rotary phase). `fetch` keeps the
  slots of spans that stay retrieved and copies only the newly retrieved ones from tier 2
  (a worker thread gathers their rows into a pinned staging buffer and copies them on a side
  stream; an event per layer that the layer's attention waits on).
Device memory for KV is therefore ``2 * layers * Hkv * cap * D * itemsize`` bytes whatever
the context length (`tier1_bytes`); `LtriCache` refuses a configuration over
``gpu_kv_budget``. On a CPU-only machine both tiers are CPU tensors and the same code runs.

`LtriLayer.update` (called by transformers' attention modules) appends the new keys and
values to tier 2 and returns them; the Ltri attention function (`topkattn.ltri.attention`)
then moves them into the local window and attends over tier 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from topkattn.errors import InputError
from topkattn.ltri.config import LtriConfig, LtriConfigError


@dataclass(frozen=True)
class TierSpec:
    """Sizes of one layer's tiers. ``pool``: retrieved-token slots; ``local``: local window
    capacity; ``tier2_device``: where tier 2 lives; ``pin``: pinned tier-2 memory."""

    sink: int
    pool: int
    local: int
    tier2_device: str
    pin: bool
    gather_threads: int = 4

    @property
    def cap(self) -> int:
        return self.sink + self.pool + self.local


def tier_spec(cfg: LtriConfig, device: torch.device, budget: int | None = None) -> TierSpec:
    """The tier sizes of ``cfg`` for a model on ``device`` (``budget`` overrides
    cfg.budget_tokens: the Top-k config's k when sparsify hands over)."""
    cuda = torch.device(device).type == "cuda"
    offload = cfg.offload == "cpu" or (cfg.offload == "auto" and cuda)
    return TierSpec(cfg.sink, budget or cfg.budget_tokens,
                    cfg.recent + 2 * cfg.max_span + 2 * cfg.chunk_size,
                    "cpu" if offload else str(device), offload and cuda, cfg.gather_threads)


def tier1_bytes(spec: TierSpec, n_layers: int, n_kv_heads: int, head_dim: int,
                dtype: torch.dtype) -> int:
    """Device bytes of tier 1 (keys and values of every layer, plus the staging buffers)."""
    item = torch.empty((), dtype=dtype).element_size()
    return 2 * n_layers * n_kv_heads * head_dim * item * spec.cap


_GATHER_POOL = None


def _gather_pool(threads: int):
    """Threads that gather tier-2 rows into pinned staging buffers (numpy's take releases the
    GIL), so the copies of a prefetch overlap the host's launches of the layers in between."""
    global _GATHER_POOL
    if _GATHER_POOL is None or _GATHER_POOL._max_workers != threads:
        from concurrent.futures import ThreadPoolExecutor

        _GATHER_POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ltri-gather")
    return _GATHER_POOL


def _bytes_view(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor [n, ...] as a uint8 numpy array [n, ..., last * itemsize] (no copy)."""
    return t.view(torch.uint8).numpy()


class LtriLayer(CacheLayerMixin):
    """One layer's two tiers (see the module docstring). Batch 1."""

    is_compileable = False
    is_sliding = False

    def __init__(self, spec: TierSpec, capacity: int = 0):
        super().__init__()
        self.spec = spec
        self.n = 0  # tokens in tier 2
        self._cap2 = max(capacity, 1024)
        self.local_start = 0
        self.local_n = 0  # positions [local_start, local_start + local_n) are in the window
        self.slot_pos = np.full(spec.pool, -1, dtype=np.int64)  # position held by each slot
        self.event = None
        self.write_event = None
        self.pending = None  # the gather job of a prefetch still being enqueued
        self.copy_stream = None
        self.moved_tokens = 0  # tokens copied tier 2 -> tier 1 (retrieval traffic)

    # -- transformers' layer interface ----------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        B, H, _, D = key_states.shape
        if B != 1:
            raise InputError(f"the Ltri cache holds one sequence; got a batch of {B}")
        self.device, self.dtype, self.H, self.D = key_states.device, key_states.dtype, H, D
        sp = self.spec
        self.t1k = torch.zeros(1, H, sp.cap, D, dtype=self.dtype, device=self.device)
        self.t1v = torch.zeros_like(self.t1k)
        self.t1_pos = torch.full((sp.cap,), -1, dtype=torch.long, device=self.device)
        self.t2k = self._alloc2(self._cap2)
        self.t2v = self._alloc2(self._cap2)
        self.stage_k = self._alloc_stage(sp.pool)
        self.stage_v = self._alloc_stage(sp.pool)
        if self.device.type == "cuda":
            self.copy_stream = torch.cuda.Stream(self.device)
        self.keys, self.values = self.t1k, self.t1v  # what transformers' generic helpers see
        self.is_initialized = True

    def _alloc2(self, n: int) -> torch.Tensor:
        return torch.empty(n, self.H, self.D, dtype=self.dtype, device=self.spec.tier2_device,
                           pin_memory=self.spec.pin)

    def _alloc_stage(self, n: int) -> torch.Tensor:
        return torch.empty(max(n, 1), self.H, self.D, dtype=self.dtype, device="cpu",
                           pin_memory=self.spec.pin)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append [1, Hkv, Lq, D] to tier 2; return them unchanged (the attention function
        moves them into the local window)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        m = key_states.shape[2]
        if self.n + m > self._cap2:
            cap = max(self.n + m, 2 * self._cap2)
            for name in ("t2k", "t2v"):
                new = self._alloc2(cap)
                new[:self.n].copy_(getattr(self, name)[:self.n])
                setattr(self, name, new)
            self._cap2 = cap
        nb = self.spec.pin
        self.t2k[self.n:self.n + m].copy_(key_states[0].transpose(0, 1), non_blocking=nb)
        self.t2v[self.n:self.n + m].copy_(value_states[0].transpose(0, 1), non_blocking=nb)
        if nb:  # gathers read tier 2 on the host: they wait for this copy first
            self.write_event = torch.cuda.Event()
            self.write_event.record()
        self.n += m
        key_states._ltri_layer = self  # tells the Ltri attention function which tiers to use
        return key_states, value_states

    def get_seq_length(self) -> int:
        return self.n

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.n + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.n, self.local_start, self.local_n = 0, 0, 0
        self.slot_pos[:] = -1
        if self.is_initialized:
            self.t1_pos.fill_(-1)

    def crop(self, tokens_to_remove: int) -> None:  # pragma: no cover - not supported
        raise InputError("the Ltri cache cannot be cropped")

    def offload(self):  # tier 2 already lives off the device
        return None

    def prefetch(self):
        return None

    # -- tier 1 -----------------------------------------------------------------------
    @property
    def pool0(self) -> int:
        return self.spec.sink

    @property
    def local0(self) -> int:
        return self.spec.sink + self.spec.pool

    def write_local(self, k: torch.Tensor, v: torch.Tensor, pos0: int) -> None:
        """Put [1, Hkv, m, D] at positions pos0.. into the local window (and positions below
        sink into the sink region)."""
        m = k.shape[2]
        if pos0 != self.local_start + self.local_n:
            raise InputError(f"local window holds up to {self.local_start + self.local_n}, "
                             f"cannot append position {pos0}")
        if self.local_n + m > self.spec.local:
            raise InputError(f"{m} new tokens do not fit the local window ({self.local_n} of "
                             f"{self.spec.local} used); prefill in chunks of at most "
                             "chunk_size tokens")
        a = self.local0 + self.local_n
        self.t1k[:, :, a:a + m].copy_(k)
        self.t1v[:, :, a:a + m].copy_(v)
        self.t1_pos[a:a + m] = torch.arange(pos0, pos0 + m, device=self.device)
        self.local_n += m
        s = self.spec.sink
        if pos0 < s:
            e = min(s, pos0 + m)
            self.t1k[:, :, pos0:e].copy_(k[:, :, :e - pos0])
            self.t1v[:, :, pos0:e].copy_(v[:, :, :e - pos0])
            self.t1_pos[pos0:e] = torch.arange(pos0, e, device=self.device)

    def local_keys(self) -> tuple[torch.Tensor, int]:
        """The local window's keys [Hkv, local_n, D] and its first position."""
        a = self.local0
        return self.t1k[0, :, a:a + self.local_n], self.local_start

    def drop_local(self, upto: int) -> None:
        """Forget local positions < upto (they are in committed spans, reachable through
        retrieval), shifting the rest to the window's start."""
        cut = min(max(0, upto - self.local_start), self.local_n)
        if cut == 0:
            return
        a, keep = self.local0, self.local_n - cut
        for t in (self.t1k, self.t1v):
            t[:, :, a:a + keep] = t[:, :, a + cut:a + cut + keep].clone()
        self.t1_pos[a:a + keep] = self.t1_pos[a + cut:a + cut + keep].clone()
        self.t1_pos[a + keep:a + self.local_n] = -1
        self.local_start += cut
        self.local_n = keep

    def fetch(self, positions: np.ndarray, stream: bool = False) -> int:
        """Make the pool hold exactly ``positions`` (sorted int64, all < local_start and
        >= sink): keep resident ones, copy the others from tier 2. With ``stream`` on CUDA
        the rows are gathered by a worker thread and copied on the side stream (`wait`
        before attending). Returns tokens copied."""
        if positions.size > self.spec.pool:
            raise InputError(f"{positions.size} retrieved tokens exceed the pool of "
                             f"{self.spec.pool}")
        self._finish_pending()
        keep = np.isin(self.slot_pos, positions)
        new = positions[~np.isin(positions, self.slot_pos)]
        free = np.flatnonzero(~keep)
        self.slot_pos[~keep] = -1
        m = new.size
        if m:
            slots = free[:m]
            self.slot_pos[slots] = new
            side = stream and self.copy_stream is not None
            if side:  # the side stream starts after what the compute stream has queued
                self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
            if side and self.spec.gather_threads:
                self.pending = _gather_pool(self.spec.gather_threads).submit(
                    self._copy_in, new, slots, True)
            elif side:
                self._copy_in(new, slots, True)
            else:
                self._copy_in(new, slots, False)
        self._sync_pool_pos(keep)
        self.moved_tokens += m
        return m

    def _finish_pending(self) -> None:
        if self.pending is not None:
            self.pending.result()  # re-raises a failed gather
            self.pending = None

    def _copy_in(self, new: np.ndarray, slots: np.ndarray, side: bool) -> None:
        """Tier-2 rows ``new`` -> tier-1 ``slots`` of the pool (on the side stream when
        ``side``; may run in a worker thread)."""
        m = new.size
        if self.event is not None:
            self.event.synchronize()  # the staging buffer of the last copy is free again
        if self.write_event is not None:
            self.write_event.synchronize()  # tier-2 rows written from the device are there
        cuda = self.device.type == "cuda"
        with (torch.cuda.device(self.device) if cuda else _null()), \
                (torch.cuda.stream(self.copy_stream) if side else _null()):
            if self.spec.tier2_device == "cpu":
                np.take(_bytes_view(self.t2k), new, axis=0, out=_bytes_view(self.stage_k)[:m])
                np.take(_bytes_view(self.t2v), new, axis=0, out=_bytes_view(self.stage_v)[:m])
                sk, sv = self.stage_k[:m], self.stage_v[:m]
            else:
                idx = torch.from_numpy(new).to(self.t2k.device)
                sk, sv = self.t2k.index_select(0, idx), self.t2v.index_select(0, idx)
            dst = torch.from_numpy(slots + self.pool0).to(self.device, non_blocking=True)
            gk = sk.to(self.device, non_blocking=True).transpose(0, 1)[None]
            gv = sv.to(self.device, non_blocking=True).transpose(0, 1)[None]
            self.t1k.index_copy_(2, dst, gk)
            self.t1v.index_copy_(2, dst, gv)
            if cuda:
                self.event = torch.cuda.Event()
                self.event.record()

    def _sync_pool_pos(self, keep) -> None:
        a = self.pool0
        self.t1_pos[a:a + self.spec.pool] = torch.from_numpy(self.slot_pos).to(
            self.device, non_blocking=True)

    def wait(self) -> None:
        """Make the current stream wait for this layer's pending pool copy."""
        self._finish_pending()
        if self.event is not None and self.device.type == "cuda":
            torch.cuda.current_stream(self.device).wait_event(self.event)

    def visible(self, q_pos0: int, Lq: int) -> torch.Tensor:
        """bool [Lq, cap]: which tier-1 slots each query (positions q_pos0..) attends to:
        the sink, the pool's filled slots, and local positions up to its own (causal)."""
        pos = self.t1_pos
        if Lq == 1 and self.local_start >= self.spec.sink and q_pos0 == self.n - 1:
            return (pos >= 0)[None]  # one query, the newest: every filled slot, sink once
        qpos = torch.arange(q_pos0, q_pos0 + Lq, device=self.device)
        vis = (pos[None, :] >= 0) & (pos[None, :] <= qpos[:, None])
        a = self.local0
        sink_dup = pos[a:] < self.spec.sink  # local copies of sink positions: once only
        vis[:, a:] &= ~sink_dup[None, :]
        return vis

    def tier2_keys(self, a: int, b: int) -> torch.Tensor:
        """Keys [Hkv, b - a, D] of positions [a, b) from tier 2, on the device."""
        return self.t2k[a:b].to(self.device).transpose(0, 1)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class LtriCache(Cache):
    """A transformers `Cache` of `LtriLayer`s carrying the Ltri state of its sequence.

    Args:
        cfg: the settings.
        n_layers: decoder layers of the model.
        device: the model's device (tier 1).
        budget: retrieved-token pool size (default cfg.budget_tokens).
        capacity: expected context length (tier 2 is allocated for it; it grows otherwise).
        state: the sequence's `LtriState` (set by `topkattn.ltri.context`).
        kv_shape: (KV heads, head dim, dtype): with ``cfg.gpu_kv_budget``, tier 1's bytes are
            checked against it here, before any model work.
    """

    def __init__(self, cfg: LtriConfig, n_layers: int, device, budget: int | None = None,
                 capacity: int = 0, state=None,
                 kv_shape: tuple[int, int, torch.dtype] | None = None):
        self.cfg = cfg
        self.spec = tier_spec(cfg, torch.device(device), budget)
        if kv_shape is not None and cfg.gpu_kv_budget is not None:
            need = tier1_bytes(self.spec, n_layers, *kv_shape)
            if need > cfg.gpu_kv_budget:
                raise LtriConfigError(
                    f"tier 1 needs {need} bytes of device memory ({n_layers} layers x (sink "
                    f"{self.spec.sink} + pool {self.spec.pool} + local window "
                    f"{self.spec.local}) tokens), over gpu_kv_budget={cfg.gpu_kv_budget}; "
                    "lower budget_tokens, recent or chunk_size, or raise the budget")
        super().__init__(layers=[LtriLayer(self.spec, capacity) for _ in range(n_layers)])
        for ly in self.layers:
            ly.owner = self
        self.state = state
        self.prefetched: dict[int, object] = {}  # layer -> the selection its pool holds

    @property
    def is_compileable(self) -> bool:
        return False

    def tier1_bytes(self) -> int:
        """Device bytes of tier 1 over all initialised layers."""
        return sum(2 * layer.t1k.numel() * layer.t1k.element_size() for layer in self.layers
                   if layer.is_initialized)

    def tier2_bytes(self) -> int:
        return sum(2 * layer.t2k.numel() * layer.t2k.element_size() for layer in self.layers
                   if layer.is_initialized)

    def moved_tokens(self) -> int:
        return sum(layer.moved_tokens for layer in self.layers)

    def full_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s whole cache as [1, Hkv, n, D] (from tier 2, on its device)."""
        ly = self.layers[layer]
        return (ly.t2k[:ly.n].transpose(0, 1)[None], ly.t2v[:ly.n].transpose(0, 1)[None])


__all__ = ["LtriCache", "LtriLayer", "TierSpec", "tier1_bytes", "tier_spec"]
