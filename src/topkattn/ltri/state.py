"""`LtriState`: one sequence's Ltri state (segmentation, index, retrieval), shared by layers.

Both ways of running Ltri use it: the ``ltri`` selector (`topkattn.ltri.selector`, any cache
that holds the whole context) and the two-tier cache (`topkattn.ltri.cache`, streaming).

Segmentation is one tiling of the context for every layer: positions [0, sink) are a span of
their own, then spans come from ``boundary``:
- "triangle": the detection layers' attention bands (`add_band`, summed over their heads) are
  collected for the positions not yet segmented, and `segment` runs triangle scores + NMS;
- "similarity": adjacent-key similarity drops of the keys passed to `segment`;
- "fixed": spans of ``max_span``.
`segment` commits the spans that end at least ``keep_tail`` positions before the end of
what was seen (a span cut by a chunk boundary is detected again with the next chunk);
tokens generated later are committed as fixed spans (`commit_fixed`: their queries never
form a prefill map). Each layer adds the representatives of newly committed spans from its
own keys (`sync`).
"""

from __future__ import annotations

import torch

from topkattn.ltri.config import LtriConfig
from topkattn.ltri.detection import detect_spans, fixed_spans, similarity_spans
from topkattn.ltri.index import SpanIndex
from topkattn.ltri.retrieval import Retriever


class LtriState:
    """Per-sequence state; see the module docstring.

    Args:
        cfg: the settings.
        n_layers, n_q_heads, n_kv_heads, head_dim: the model's shape.
        device: where the index lives (the accelerator).
    """

    def __init__(self, cfg: LtriConfig, n_layers: int, n_q_heads: int, n_kv_heads: int,
                 head_dim: int, device="cpu"):
        self.cfg = cfg
        self.n_layers, self.n_q_heads = n_layers, n_q_heads
        on_gpu = torch.device(device).type == "cuda"
        self.index = SpanIndex(n_layers, n_kv_heads, head_dim, device, cfg.dynamic,
                               cfg.dynamic_weight, cfg.dynamic_window,
                               torch.bfloat16 if on_gpu else torch.float32)
        self.retriever = Retriever(cfg, n_layers)
        self.detect_layers = cfg.layers_for_detection(n_layers)
        self.band: torch.Tensor | None = None  # [rows, max_span] for positions band_start..
        self.band_start = 0
        self.band_seen: dict[int, int] = {}  # detection layer -> band rows seen up to
        self.pass_key: object = None
        self.horizon = 0  # retrieval candidates of this pass end at or before it
        self.joined: set[int] = set()

    # -- passes -------------------------------------------------------------------------
    def begin_pass(self, key: object, prefill: bool = False) -> bool:
        """Start a forward pass identified by ``key`` (e.g. the cache length) unless it is
        the current one; True when a new pass started. A prefill pass always retrieves anew."""
        if key == self.pass_key:
            return False
        self.pass_key = key
        self.retriever.begin(force_refresh=prefill)
        return True

    # -- detection ----------------------------------------------------------------------
    def wants_band(self, layer: int) -> bool:
        return self.cfg.boundary == "triangle" and layer in self.detect_layers

    def add_band(self, layer: int, rows: torch.Tensor, start: int) -> None:
        """Add a detection layer's band rows [r, max_span] of positions start .. start+r-1
        (summed over its heads) to the collected band."""
        rows = rows.float()
        end = start + rows.shape[0]
        if self.band is None:
            self.band_start = max(self.index.covered, 0)
            self.band = rows.new_zeros(0, rows.shape[1])
        need = end - self.band_start
        if need > self.band.shape[0]:
            self.band = torch.cat([self.band, self.band.new_zeros(need - self.band.shape[0],
                                                                  self.band.shape[1])])
        a = max(start, self.band_start)
        if a < end:
            self.band[a - self.band_start:end - self.band_start] += rows[a - start:]
        self.band_seen[layer] = max(self.band_seen.get(layer, 0), end)

    def band_ready(self) -> int:
        """Positions every detection layer has given band rows for (0 if one has not)."""
        if any(layer not in self.band_seen for layer in self.detect_layers):
            return 0
        return min(self.band_seen[layer] for layer in self.detect_layers)

    def segment(self, upto: int, keep_tail: int = 0, keys: torch.Tensor | None = None,
                keys_pos0: int = 0) -> int:
        """Commit spans over [covered, upto), but not those ending after upto - keep_tail.

        keys [Hkv, n, D] at positions keys_pos0.. (similarity boundaries, and the fallback of
        triangle detection where no band was collected). Returns spans committed."""
        cfg, idx = self.cfg, self.index
        a = idx.covered
        before = idx.n_spans
        if a == 0 and cfg.sink > 0 and upto > 0:
            idx.add_spans([(0, min(cfg.sink, upto))])
            a = idx.covered
        limit = upto - keep_tail
        if limit <= a:
            return idx.n_spans - before
        ready = self.band_ready() if cfg.boundary == "triangle" else 0
        if cfg.boundary == "triangle" and ready >= upto and self.band is not None:
            rows = self.band[a - self.band_start:upto - self.band_start]
            thr = cfg.threshold * self.n_q_heads * len(self.detect_layers)
            spans = detect_spans(rows, thr, cfg.min_span, cfg.max_span, offset=a)
        elif cfg.boundary in ("similarity", "triangle") and keys is not None:
            spans = similarity_spans(keys[:, a - keys_pos0:upto - keys_pos0], a, upto,
                                     cfg.min_span, cfg.max_span)
        else:
            spans = fixed_spans(a, upto, cfg.max_span)
        spans = [s for s in spans if s[1] <= limit] if keep_tail else spans
        idx.add_spans(spans)
        self._drop_band()
        return idx.n_spans - before

    def commit_fixed(self, upto: int, keep_tail: int) -> int:
        """Commit fixed spans of max_span over [covered, upto - keep_tail) (whole ones only):
        generated tokens, whose attention no prefill map shows."""
        idx, M = self.index, self.cfg.max_span
        a = idx.covered
        n = (upto - keep_tail - a) // M
        if n > 0:
            idx.add_spans([(a + i * M, a + (i + 1) * M) for i in range(n)])
            self._drop_band()
        return max(n, 0)

    def _drop_band(self) -> None:
        if self.band is not None:
            cut = self.index.covered - self.band_start
            if cut > 0:
                self.band = self.band[cut:]
                self.band_start = self.index.covered

    # -- representatives ----------------------------------------------------------------
    def sync(self, layer: int, keys: torch.Tensor, pos0: int = 0) -> None:
        """Add ``layer``'s representatives of committed spans from keys [Hkv, n, D] at
        positions pos0.. (those not covered by these keys wait for a later call)."""
        if self.index.represented(layer) < self.index.n_spans:
            self.index.add_keys(layer, keys, pos0)

    def exclude(self, layer: int) -> torch.Tensor:
        """bool [S]: spans never retrieved (the sink span: always attended)."""
        return self.index.ends[:self.index.represented(layer)] <= self.cfg.sink


__all__ = ["LtriState"]
