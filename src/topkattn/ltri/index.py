"""`SpanIndex`: the span index of Ltri-LLM (one object per sequence).

The context is cut into spans (one segmentation for every layer: span s covers positions
[starts[s], ends[s])). Per layer and KV head the index holds each span's static
representatives: the mean of its keys and their channel-wise bounds (min and max). With
``dynamic=True`` a span's mean is refined by its neighbours' votes (`dynamic_means`): every
time retrieval picks spans, their vote counts grow, and a span's dynamic representative is
its own mean plus ``dynamic_weight`` times the vote-weighted mean of the spans within
``dynamic_window`` of it, so the context around often-retrieved evidence is found with it.

- `add_spans` extends the segmentation (streaming: spans arrive in order, tiling the context);
- `add_keys` computes one layer's representatives of the spans whose keys it is given;
- `scores` / `search` rank spans for a query and fill the token budget;
- `save` / `load` keep a prefilled document's index for reuse.
Representatives live on the index's device (fp32, or bf16 to halve them on an accelerator:
`LtriState` stores bf16 on CUDA), computed and scored in fp32; tensors grow by doubling.
"""

from __future__ import annotations

from pathlib import Path

import torch

from topkattn.errors import InputError

FORMAT = "topkattn-ltri-span-index/1"


class _Grow:
    """A tensor growing along dim ``dim`` with doubling capacity; ``view`` is the filled part."""

    def __init__(self, shape: tuple[int, ...], dim: int, device, dtype=torch.float32,
                 fill: float = 0.0):
        self.dim, self.n, self.fill = dim, 0, fill
        cap = list(shape)
        cap[dim] = max(cap[dim], 16)
        self.buf = torch.full(cap, fill, dtype=dtype, device=device)

    @property
    def view(self) -> torch.Tensor:
        return self.buf.narrow(self.dim, 0, self.n)

    def append(self, t: torch.Tensor) -> None:
        m = t.shape[self.dim]
        need = self.n + m
        if need > self.buf.shape[self.dim]:
            shape = list(self.buf.shape)
            shape[self.dim] = max(need, 2 * shape[self.dim])
            new = torch.full(shape, self.fill, dtype=self.buf.dtype, device=self.buf.device)
            new.narrow(self.dim, 0, self.n).copy_(self.view)
            self.buf = new
        self.buf.narrow(self.dim, self.n, m).copy_(t)
        self.n = need


def fill_budget(order: torch.Tensor, lengths: torch.Tensor, budget: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Spans in ``order`` (ids, best first) while the token budget lasts.

    Returns (ids [n], tokens [n]): every span whose tokens start within the budget, the
    last one cut to what is left (tokens < its length)."""
    ln = lengths[order]
    before = ln.cumsum(0) - ln
    keep = before < budget
    ids = order[keep]
    take = torch.minimum(ln[keep], budget - before[keep])
    return ids, take


def span_positions(starts: torch.Tensor, ids: torch.Tensor, take: torch.Tensor
                   ) -> torch.Tensor:
    """Positions of spans ``ids`` (their first ``take`` tokens each), sorted: int64 [sum]."""
    if ids.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=starts.device)
    first = starts[ids]
    seg = torch.repeat_interleave(torch.arange(ids.numel(), device=ids.device), take)
    off = torch.arange(seg.numel(), device=ids.device) - (take.cumsum(0) - take)[seg]
    return (first[seg] + off).sort().values


class SpanIndex:
    """Span representatives per layer and KV head for one sequence (see the module doc).

    Args:
        n_layers, n_kv_heads, head_dim: the model's shape.
        device: where representatives live (the accelerator: search runs there).
        dynamic, dynamic_weight, dynamic_window: the dynamic representatives.
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, device="cpu",
                 dynamic: bool = False, dynamic_weight: float = 0.5, dynamic_window: int = 1,
                 dtype: torch.dtype = torch.float32):
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.device = torch.device(device)
        self.dynamic, self.dynamic_weight = dynamic, float(dynamic_weight)
        self.dynamic_window = int(dynamic_window)
        self._starts = _Grow((0,), 0, self.device, torch.long)
        self._ends = _Grow((0,), 0, self.device, torch.long)
        self._votes = _Grow((0,), 0, self.device)
        shape = (n_kv_heads, 0, head_dim)
        self.dtype = dtype  # of the stored representatives (computed and scored in fp32)
        self._mean = [_Grow(shape, 1, self.device, dtype) for _ in range(n_layers)]
        self._lo = [_Grow(shape, 1, self.device, dtype) for _ in range(n_layers)]
        self._hi = [_Grow(shape, 1, self.device, dtype) for _ in range(n_layers)]
        self._host_starts: list[int] = []
        self._host_ends: list[int] = []

    # -- segmentation -----------------------------------------------------------------
    @property
    def n_spans(self) -> int:
        return self._starts.n

    @property
    def covered(self) -> int:
        """Positions [0, covered) belong to spans."""
        return self._host_ends[-1] if self._host_ends else 0

    @property
    def starts(self) -> torch.Tensor:
        return self._starts.view

    @property
    def ends(self) -> torch.Tensor:
        return self._ends.view

    @property
    def lengths(self) -> torch.Tensor:
        return self.ends - self.starts

    @property
    def votes(self) -> torch.Tensor:
        return self._votes.view

    def host_bounds(self, s: int) -> tuple[int, int]:
        return self._host_starts[s], self._host_ends[s]

    def add_spans(self, spans: list[tuple[int, int]]) -> None:
        """Append spans [(start, end)], which must continue the tiling from `covered`."""
        pos = self.covered
        for a, b in spans:
            if a != pos or b <= a:
                raise InputError(f"span ({a}, {b}) does not continue the index at {pos} "
                                 "(spans must tile the context in order)")
            pos = b
        if not spans:
            return
        st = torch.tensor([a for a, _ in spans], dtype=torch.long)
        en = torch.tensor([b for _, b in spans], dtype=torch.long)
        self._starts.append(st.to(self.device))
        self._ends.append(en.to(self.device))
        self._votes.append(torch.zeros(len(spans), device=self.device))
        self._host_starts += st.tolist()
        self._host_ends += en.tolist()

    # -- representatives ----------------------------------------------------------------
    def represented(self, layer: int) -> int:
        """Spans of ``layer`` that have representatives (the first ones)."""
        return self._mean[layer].n

    def pending_range(self, layer: int) -> tuple[int, int]:
        """Positions [a, b) of the spans ``layer`` still lacks representatives for."""
        r = self.represented(layer)
        if r >= self.n_spans:
            return self.covered, self.covered
        return self._host_starts[r], self.covered

    @torch.no_grad()
    def add_keys(self, layer: int, keys: torch.Tensor, pos0: int) -> int:
        """Representatives of ``layer``'s missing spans from keys [Hkv, n, D] at positions
        pos0 .. pos0 + n - 1 (spans not wholly inside are left for a later call, in order).
        Returns how many spans were added."""
        r, S = self.represented(layer), self.n_spans
        n = keys.shape[1]
        last = r
        while last < S and self._host_ends[last] <= pos0 + n:
            last += 1
        if last == r:
            return 0
        a = self._host_starts[r]
        if a < pos0:
            raise InputError(f"layer {layer}: keys from position {pos0} miss span {r} "
                             f"starting at {a}")
        b = self._host_ends[last - 1]
        kf = keys[:, a - pos0:b - pos0].to(self.device, torch.float32)
        lens = torch.tensor([self._host_ends[s] - self._host_starts[s] for s in range(r, last)],
                            device=self.device)
        seg = torch.repeat_interleave(torch.arange(last - r, device=self.device), lens)
        H, D = kf.shape[0], kf.shape[2]
        idx = seg[None, :, None].expand(H, -1, D)
        tot = kf.new_zeros(H, last - r, D).scatter_add_(1, idx, kf)
        lo = kf.new_full((H, last - r, D), float("inf")).scatter_reduce_(1, idx, kf, "amin")
        hi = kf.new_full((H, last - r, D), float("-inf")).scatter_reduce_(1, idx, kf, "amax")
        self._mean[layer].append(tot / lens[None, :, None])
        self._lo[layer].append(lo)
        self._hi[layer].append(hi)
        return last - r

    def means(self, layer: int) -> torch.Tensor:
        """fp32 [Hkv, S, D] mean keys of ``layer``'s represented spans."""
        return self._mean[layer].view.float()

    def bounds(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 [Hkv, S, D] channel-wise key minima and maxima."""
        return self._lo[layer].view.float(), self._hi[layer].view.float()

    def dynamic_means(self, layer: int) -> torch.Tensor:
        """[Hkv, S, D]: mean_s + w * sum_{0 < |t - s| <= window} v_t mean_t / sum v_t (the
        static mean where the neighbours have no votes)."""
        m = self.means(layer)
        S = m.shape[1]
        v = self.votes[:S]
        if S == 0 or float(v.sum()) == 0.0:
            return m
        num = torch.zeros_like(m)
        den = torch.zeros(S, device=m.device)
        for off in range(1, self.dynamic_window + 1):
            if off >= S:
                break
            num[:, off:] += v[None, :-off, None] * m[:, :-off]  # left neighbour
            den[off:] += v[:-off]
            num[:, :-off] += v[None, off:, None] * m[:, off:]  # right neighbour
            den[:-off] += v[off:]
        nb = num / den.clamp(min=1e-12)[None, :, None]
        return torch.where(den[None, :, None] > 0, m + self.dynamic_weight * nb, m)

    def record_votes(self, ids: torch.Tensor) -> None:
        """Count one vote for each retrieved span (drives the dynamic representatives)."""
        if ids.numel():
            self._votes.view.index_add_(0, ids.to(self.device),
                                        torch.ones(ids.numel(), device=self.device))

    # -- search -------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, layer: int, q: torch.Tensor, represent: str = "mean",
               heads: tuple[int, ...] = ()) -> torch.Tensor:
        """fp32 [h, S]: each KV head's (or of ``heads``) score of every represented span of
        ``layer``, summed over its query heads and the queries q [Hq, Lq, D] (or [Hq, D])."""
        qf = (q if q.dim() == 3 else q[:, None]).to(self.device, torch.float32)
        Hq, Lq, D = qf.shape
        H = self.n_kv_heads
        G = Hq // H
        if represent == "mean":
            rep = self.dynamic_means(layer) if self.dynamic else self.means(layer)
            s = torch.matmul(qf.reshape(H, G * Lq, D), rep.transpose(-1, -2)).sum(1)  # [H, S]
        elif represent == "bound":
            lo, hi = self.bounds(layer)
            qv = qf.reshape(H, G * Lq, D)
            s = (torch.matmul(qv.clamp(min=0), hi.transpose(-1, -2))
                 + torch.matmul(qv.clamp(max=0), lo.transpose(-1, -2))).sum(1)
        else:
            raise InputError(f"represent must be 'mean' or 'bound', got {represent!r}")
        return s[list(heads)] if heads else s

    def search(self, layer: int, q: torch.Tensor, budget: int, represent: str = "mean",
               heads: tuple[int, ...] = (), exclude: torch.Tensor | None = None,
               n_spans: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top spans of ``layer`` for q (KV heads' scores summed) among its first
        ``n_spans`` (default all), filled up to ``budget`` tokens: (ids [n], tokens [n]);
        ``exclude`` bool [S] spans never returned."""
        s = self.scores(layer, q, represent, heads).sum(0)[:n_spans]
        if exclude is not None:
            s = s.masked_fill(exclude[:s.shape[0]], float("-inf"))
        order = s.argsort(descending=True, stable=True)
        if exclude is not None:
            order = order[~exclude[:s.shape[0]][order]]
        return fill_budget(order, self.lengths[:s.shape[0]], budget)

    def positions(self, ids: torch.Tensor, take: torch.Tensor) -> torch.Tensor:
        return span_positions(self.starts, ids, take)

    def count_upto(self, position: int) -> int:
        """Spans ending at or before ``position``."""
        import bisect

        return bisect.bisect_right(self._host_ends, position)

    def span_of(self, position: int) -> int:
        """The span holding ``position``."""
        import bisect

        if not 0 <= position < self.covered:
            raise InputError(f"position {position} is outside the index [0, {self.covered})")
        return bisect.bisect_right(self._host_starts, position) - 1

    # -- persistence --------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": FORMAT,
            "shape": [self.n_layers, self.n_kv_heads, self.head_dim],
            "dynamic": [self.dynamic, self.dynamic_weight, self.dynamic_window],
            "dtype": str(self.dtype).removeprefix("torch."),
            "starts": self.starts.cpu(), "ends": self.ends.cpu(), "votes": self.votes.cpu(),
            "mean": [m.view.cpu() for m in self._mean],
            "lo": [m.view.cpu() for m in self._lo],
            "hi": [m.view.cpu() for m in self._hi],
        }

    def save(self, path: str | Path) -> Path:
        """Write the index to ``path`` (torch.save of plain tensors)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path)
        return path

    @classmethod
    def from_state_dict(cls, d: dict, device="cpu") -> "SpanIndex":
        if d.get("format") != FORMAT:
            raise InputError(f"not a span index (format {d.get('format')!r}, expected "
                             f"{FORMAT!r})")
        L, H, D = d["shape"]
        dyn, w, win = d["dynamic"]
        idx = cls(L, H, D, device, dyn, w, win, getattr(torch, d.get("dtype", "float32")))
        st, en = d["starts"].tolist(), d["ends"].tolist()
        idx.add_spans(list(zip(st, en)))
        idx._votes.view.copy_(d["votes"].to(idx.device))
        for layer in range(L):
            idx._mean[layer].append(d["mean"][layer].to(idx.device))
            idx._lo[layer].append(d["lo"][layer].to(idx.device))
            idx._hi[layer].append(d["hi"][layer].to(idx.device))
        return idx

    @classmethod
    def load(cls, path: str | Path, device="cpu") -> "SpanIndex":
        """Read an index written by `save` onto ``device``."""
        from topkattn.errors import MissingFileError

        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"span index file {str(path)!r} does not exist")
        return cls.from_state_dict(torch.load(path, map_location="cpu", weights_only=True),
                                   device)

    def nbytes(self) -> int:
        """Bytes of the representatives (all layers)."""
        return (sum(3 * m.buf.numel() * m.buf.element_size() for m in self._mean)
                + 3 * 8 * self._starts.buf.numel())


__all__ = ["FORMAT", "SpanIndex", "fill_budget", "span_positions"]
