"""Benchmark: one approximate decode step with a Lightning Indexer vs SDPA dense decode.

The step (DeepSeek Sparse Attention decode, on Llama-3-8B attention shapes by default):
  1. indexer query and head weights from the token's hidden state (two small GEMMs) and the
     token's indexer key from its model keys, written into the indexer key cache;
  2. index scores over all cached indexer keys, I[s] = sum_h w_h ReLU(q_h . k_s)
     (a fused Triton kernel, `index_scores`; torch fallback);
  3. top-k selection of I (the radix-select kernel `topkattn.ops.select.topk_select`;
     torch.topk fallback);
  4. sparse attention of all query heads to the k selected K/V rows
     (`topkattn.ops.topk.triton_sparse.sparse_attention`; gather + SDPA fallback).
Compared with ``F.scaled_dot_product_attention`` over the whole cache (enable_gqa), both timed
eagerly and replayed from a CUDA graph (which removes launch gaps; decode runs that way in
serving engines). ``step`` is 1-4; ``attend`` is 2-4, the part that replaces SDPA (step 1 is
per-token GEMMs, like the model's own q/k/v projections, which SDPA's time excludes too).

Run on a GPU:  ``PYTHONPATH=src python -m topkattn.bench.indexer_decode --out DIR``
(options: --ctx 32k,128k --batch 1,8 --k 2048 --heads 4 --head-dim 64). The bench CLI can call
`run(ctxs, ks, batches, out_dir)` like the other ``topkattn.bench`` modules. Writes
``indexer_decode.json``, ``.md`` and ``.png`` under DIR.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

try:  # Triton is optional: the torch fallback runs everywhere
    import triton
    import triton.language as tl

    @triton.jit
    def _index_scores_kernel(KI, QI, W, OUT, L, stride_kb, stride_kl, stride_qb, stride_wb,
                             stride_ob, H: tl.constexpr, DI: tl.constexpr,
                             BLOCK: tl.constexpr):
        """OUT[b, s] = sum_h W[b, h] * relu(QI[b, h, :] . KI[b, s, :]) for a block of s."""
        b = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        d = tl.arange(0, DI)
        m = offs < L
        kk = tl.load(KI + b.to(tl.int64) * stride_kb + offs[:, None].to(tl.int64) * stride_kl
                     + d[None, :], mask=m[:, None], other=0.0).to(tl.float32)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for h in tl.static_range(H):
            qh = tl.load(QI + b * stride_qb + h * DI + d).to(tl.float32)
            wh = tl.load(W + b * stride_wb + h).to(tl.float32)
            acc += wh * tl.maximum(tl.sum(kk * qh[None, :], 1), 0.0)
        tl.store(OUT + b.to(tl.int64) * stride_ob + offs, acc, mask=m)

    HAVE_TRITON = True
except ImportError:  # pragma: no cover
    HAVE_TRITON = False


def index_scores_torch(qi: torch.Tensor, w: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
    """qi [B, H, d] (already scaled), w [B, H], ki [B, L, d] -> fp32 [B, L]."""
    s = torch.bmm(ki, qi.transpose(1, 2))  # [B, L, H]
    return torch.bmm(torch.relu(s.float()), w.float().unsqueeze(-1)).squeeze(-1)


def index_scores(qi: torch.Tensor, w: torch.Tensor, ki: torch.Tensor, *,
                 block: int = 128) -> torch.Tensor:
    """Fused index scores (Triton on CUDA or under TRITON_INTERPRET; torch otherwise)."""
    from topkattn.ops.topk.triton_env import kernels_run_on

    if not HAVE_TRITON or not kernels_run_on(ki):
        return index_scores_torch(qi, w, ki)
    B, L, d = ki.shape
    H = qi.shape[1]
    qi, w = qi.contiguous(), w.contiguous()
    out = torch.empty(B, L, device=ki.device, dtype=torch.float32)
    grid = (triton.cdiv(L, block), B)
    _index_scores_kernel[grid](ki, qi, w, out, L, ki.stride(0), ki.stride(1), qi.stride(0),
                               w.stride(0), out.stride(0), H=H, DI=d, BLOCK=block)
    return out


def _select(scores: torch.Tensor, k: int) -> torch.Tensor:
    try:
        from topkattn.ops.select import topk_select

        if scores.is_cuda:
            return topk_select(scores, k)
    except Exception:  # pragma: no cover - kernel not available
        pass
    return scores.topk(k, dim=-1).indices.int()


def _sparse(q, k, v, idx):
    """Attention of q [B, Hq, 1, D] to rows idx [B, Hkv, 1, n] of k, v [B, Hkv, L, D]."""
    if q.is_cuda:
        try:
            from topkattn.ops.topk.triton_sparse import sparse_attention

            return sparse_attention(q, k, v, idx, causal=False, assume_unique=True)
        except ImportError:  # pragma: no cover
            pass
    return _gather_sdpa(q, k, v, idx)


def _gather_sdpa(q, k, v, idx):
    """Fallback / reference: gather the rows idx [B, Hkv, 1, n], then SDPA over them."""
    B, Hkv, _, n = idx.shape
    D = k.shape[-1]
    g = idx.long().reshape(B, Hkv, n, 1).expand(B, Hkv, n, D)
    return F.scaled_dot_product_attention(q, k.gather(2, g), v.gather(2, g), enable_gqa=True)


class IndexerDecodeStep:
    """State and one step of indexer-driven sparse decode (random weights: timing only).

    Shapes: hidden [B, hidden]; q [B, Hq, 1, D]; KV cache [B, Hkv, L, D]; indexer key cache
    [B, L, d]; weights wq [hidden, H*d], ww [hidden, H], wk [Hkv*D, d].
    """

    def __init__(self, B: int, L: int, k: int, Hq=32, Hkv=8, D=128, hidden=4096, H=4, d=64,
                 dtype=torch.bfloat16, device="cuda", fused_scores: bool = True):
        g = torch.Generator(device=device).manual_seed(0)
        r = lambda *s: torch.randn(*s, generator=g, device=device, dtype=dtype)  # noqa: E731
        self.B, self.L, self.k, self.H, self.d, self.Hkv = B, L, k, H, d, Hkv
        self.hidden = r(B, hidden)
        self.q = r(B, Hq, 1, D)
        self.kc, self.vc = r(B, Hkv, L, D), r(B, Hkv, L, D)
        self.ki = r(B, L, d)
        self.wq, self.ww = r(hidden, H * d) * hidden**-0.5, r(hidden, H) * hidden**-0.5
        self.wk = r(Hkv * D, d) * (Hkv * D) ** -0.5
        self.fused = fused_scores
        self.pos = L - 1

    def project(self):
        qi = (self.hidden @ self.wq).view(self.B, self.H, self.d) * self.d**-0.5
        w = (self.hidden @ self.ww).float() * self.H**-0.5
        knew = self.kc[:, :, self.pos].reshape(self.B, -1) @ self.wk  # [B, d]
        self.ki[:, self.pos] = F.layer_norm(knew.float(), (self.d,)).to(self.ki.dtype)
        return qi, w

    def scores(self, qi, w):
        return index_scores(qi, w, self.ki) if self.fused else index_scores_torch(qi, w, self.ki)

    def step(self):
        return self.attend(*self.project())

    def attend(self, qi, w):
        """The sparse attention proper, given the indexer query: index scores over the cache,
        top-k selection, sparse attention to the k rows (what replaces dense attention; the
        projections are per-token GEMMs like the model's own q/k/v projections)."""
        s = self.scores(qi, w)
        idx = _select(s, self.k)  # [B, k]
        idx = idx.view(self.B, 1, 1, self.k).expand(self.B, self.Hkv, 1, self.k)
        return _sparse(self.q, self.kc, self.vc, idx)

    def dense(self):
        return F.scaled_dot_product_attention(self.q, self.kc, self.vc, enable_gqa=True)


def bench_case(B: int, L: int, k: int, H: int = 4, d: int = 64, fused: bool = True) -> dict:
    """Times (ms, median) of each stage, the whole step, and SDPA dense, eager and graphed."""
    from topkattn.bench.common import time_graph_ms, time_ms

    st = IndexerDecodeStep(B, L, k, H=H, d=d, fused_scores=fused)
    qi, w = st.project()
    s = st.scores(qi, w)
    idx = _select(s, k).view(B, 1, 1, k).expand(B, st.Hkv, 1, k)
    row = {"B": B, "ctx": L, "k": k, "indexer": f"{H}x{d}", "fused_scores": fused,
           "case": f"B{B} {L // 1024}k"}
    row["project_ms"] = time_ms(st.project)
    row["scores_ms"] = time_ms(lambda: st.scores(qi, w))
    row["select_ms"] = time_ms(lambda: _select(s, k))
    row["sparse_ms"] = time_ms(lambda: _sparse(st.q, st.kc, st.vc, idx))
    row["step_ms"] = time_ms(st.step)
    row["sdpa_ms"] = time_ms(st.dense)
    row["step_graph_ms"] = time_graph_ms(st.step)
    row["sdpa_graph_ms"] = time_graph_ms(st.dense)
    row["attend_graph_ms"] = time_graph_ms(lambda: st.attend(qi, w))
    row["speedup"] = row["sdpa_ms"] / row["step_ms"]
    if row["step_graph_ms"] and row["sdpa_graph_ms"]:
        row["speedup_graph"] = row["sdpa_graph_ms"] / row["step_graph_ms"]
    if row["attend_graph_ms"] and row["sdpa_graph_ms"]:
        row["speedup_attend_graph"] = row["sdpa_graph_ms"] / row["attend_graph_ms"]
    # correctness: the kernel's output equals fp32 attention over the gathered rows
    ref = _gather_sdpa(st.q.float(), st.kc.float(), st.vc.float(), idx)
    out = _sparse(st.q, st.kc, st.vc, idx)
    row["max_abs_err"] = float((out.float() - ref.float()).abs().max())
    del st
    torch.cuda.empty_cache()
    return row


def run(ctxs: list[int], ks: list[int], batches: list[int], out_dir: str,
        heads: int = 4, head_dim: int = 64) -> list[dict]:
    """All cases; writes indexer_decode.{json,md,png} to ``out_dir`` (bench CLI entry)."""
    from topkattn.bench.common import env_info, write_results

    rows = []
    for B in batches:
        for L in ctxs:
            for k in ks:
                if k >= L:
                    continue
                rows.append(bench_case(B, L, k, heads, head_dim, fused=True))
                if HAVE_TRITON:
                    r = bench_case(B, L, k, heads, head_dim, fused=False)
                    rows.append({"case": r["case"] + " torch-scores", **{
                        c: r[c] for c in r if c != "case"}})
    cols = ["case", "k", "indexer", "fused_scores", "project_ms", "scores_ms", "select_ms",
            "sparse_ms", "step_ms", "sdpa_ms", "speedup", "step_graph_ms", "sdpa_graph_ms",
            "speedup_graph", "attend_graph_ms", "speedup_attend_graph", "max_abs_err"]
    write_results("indexer_decode", rows, cols, out_dir, env_info(),
                  plot=("case", "indexer decode step vs SDPA dense (ms)",
                        ["step_ms", "step_graph_ms", "sdpa_ms", "sdpa_graph_ms"]))
    return rows


def main(argv: list[str] | None = None) -> None:
    from topkattn.bench.common import parse_sizes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ctx", default="32k,128k")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--k", default="2048")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--out", default="runs/bench")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA device")
    run(parse_sizes(a.ctx), parse_sizes(a.k), parse_sizes(a.batch), a.out, a.heads, a.head_dim)


if __name__ == "__main__":
    main()
