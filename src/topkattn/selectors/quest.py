"""``quest``: query-aware page selection (Quest, Tang et al., arXiv 2406.10774).

Keys are grouped in pages of ``page_size`` consecutive positions; each page keeps the
per-channel minimum and maximum of its keys. For a query q the page's upper bound on q·k is
``sum_c max(q_c * min_c, q_c * max_c)`` (it is never below the true maximum of q·k over the
page); the pages with the highest bounds are taken, whole, until ``topk`` tokens are chosen
(the last page may be cut). Page statistics of full pages live in ``ctx.store`` and are
computed for new pages only; stored pages are checked against the cached keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from topkattn.selectors._common import PrefixStore, check_int, fingerprint
from topkattn.selectors.base import ScoreSelector, SelectionContext, expand_heads


def page_bounds(k: torch.Tensor, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-page, per-channel key minimum and maximum.

    k [B, H, L, D] -> (kmin, kmax) each [B, H, ceil(L / page_size), D] (the last page may be
    partial).
    """
    B, H, L, D = k.shape
    P = -(-L // page_size)
    pad = P * page_size - L
    kf = k.float()
    if pad:
        kmin_src = torch.cat([kf, kf.new_full((B, H, pad, D), float("inf"))], 2)
        kmax_src = torch.cat([kf, kf.new_full((B, H, pad, D), float("-inf"))], 2)
    else:
        kmin_src = kmax_src = kf
    kmin = kmin_src.view(B, H, P, page_size, D).amin(3)
    kmax = kmax_src.view(B, H, P, page_size, D).amax(3)
    return kmin, kmax


def page_upper_bound(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """Quest's bound: sum_c max(q_c min_c, q_c max_c).

    q [B, H, Lq, D]; kmin, kmax [B, H, P, D] (same H) -> [B, H, Lq, P] fp32.
    """
    qf = q.float()
    return torch.matmul(qf.clamp(min=0), kmax.transpose(-1, -2)) + torch.matmul(
        qf.clamp(max=0), kmin.transpose(-1, -2)
    )


@dataclass(frozen=True)
class QuestSelector(ScoreSelector):
    """Quest page selection.

    Attributes:
        page_size: tokens per page (spec ``quest:32``).
    """

    page_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "page_size", check_int("page_size", self.page_size, 1))

    def _bounds(self, k: torch.Tensor, store: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Page min/max [B, Hkv, P, D] of all pages, full ones from the store."""
        B, Hkv, Lk, D = k.shape
        ps = self.page_size
        P_full = Lk // ps
        fp_now = fingerprint(k, 0, P_full * ps).view(B, P_full, ps, -1).sum(2)
        st: PrefixStore | None = store.get("quest")
        if st is None or st.data.shape[0] != B or st.data.shape[2:] != (Hkv, 2, D):
            st = PrefixStore.empty(B, (Hkv, 2, D), k.device)
        nv = st.valid_prefix(fp_now)
        st.truncate(nv)
        if P_full > nv:
            kmin, kmax = page_bounds(k[:, :, nv * ps : P_full * ps], ps)  # [B, Hkv, n, D]
            st.append(torch.stack([kmin, kmax], 3).transpose(1, 2), fp_now[:, nv:])
        store["quest"] = st
        kmin = st.data[:, :, :, 0].transpose(1, 2)
        kmax = st.data[:, :, :, 1].transpose(1, 2)
        if Lk > P_full * ps:
            pmin, pmax = page_bounds(k[:, :, P_full * ps :], ps)
            kmin, kmax = torch.cat([kmin, pmin], 2), torch.cat([kmax, pmax], 2)
        return kmin, kmax

    @torch.no_grad()
    def score(self, q: torch.Tensor, k: torch.Tensor, ctx: SelectionContext) -> torch.Tensor:
        """q [B, Hq, Lq, D], k [B, Hkv, Lk, D] -> [B, Hq, Lq, Lk]: every token scored by its
        page's upper bound (the pages' tokens tie; the base keeps the lowest positions of the
        last page it cuts)."""
        kmin, kmax = self._bounds(k, ctx.store)
        Hq = q.shape[1]
        ub = page_upper_bound(q, expand_heads(kmin, Hq), expand_heads(kmax, Hq))  # [B, Hq, Lq, P]
        return ub.repeat_interleave(self.page_size, dim=-1)[..., : k.shape[2]]


__all__ = ["QuestSelector", "page_bounds", "page_upper_bound"]
