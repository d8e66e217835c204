"""Tuning knobs of the Triton kernels: one frozen dataclass per kernel family.

The defaults are the values measured fastest (the comments give the measurement). The launch
code reads them from `current()`, the `Tuning` in force: `DEFAULT` unless a caller (a test, a
device sweep in ``scripts/``) overrides a family for a block of code::

    from dataclasses import replace
    from topkattn.ops import tuning

    with tuning.tuned(decode=replace(tuning.DEFAULT.decode, tiles=2)):
        ...  # every decode launch in here uses 2 key tiles per scores program

Nothing here changes what a kernel computes, only how it is tiled and launched (the selection
and the attention are exact under every setting; the tests check that on several).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Iterator


@dataclass(frozen=True)
class DecodeTuning:
    """Top-k decode (`ops/topk/triton_decode.py`)."""

    block_n: int = 128  # keys per scores tile; best at B8 128k on the H100 (0.649x vs 0.676x at 64)
    # key tiles per scores program (their histogram counts are added once); H200 B8 128k:
    # 0.769x SDPA vs 0.934x with 1 tile
    tiles: int = 4
    scores_warps: int = 4
    scores_stages: int = 3  # software-pipelining depth of the scores kernel (used when tiles > 1)
    sparse_waves: int = 2  # programs of the sparse pass per SM (index lists split finer when few rows)


@dataclass(frozen=True)
class DenseTuning:
    """Dense (key range) decode (`ops/topk/triton_dense.py`)."""

    block_n: int = 64
    warps: int = 4
    stages: int = 3  # software-pipelining depth of the key loop
    waves: int = 2  # programs per SM the key range is split over (fewer when the range is short)


@dataclass(frozen=True)
class SelectTuning:
    """Row selection (`ops/select/triton_select.py`)."""

    scan_block: int | None = None  # entries per scan block (None: 512)
    # one-warp scan programs: their reductions and prefix sums stay in the warp (shuffles, no
    # shared memory or barriers); H200, 32 x 128k: scan 19.0 -> 16.3 us (1024 entries, 8 warps before)
    scan_warps: int | None = 2  # None: 4 entries per thread
    scan_iters: int = 1  # scan blocks per program, at most (1 fastest on the H200: more in flight)
    # entries per block of the finish (the window's entries stay in registers up to it): a
    # sampled window holds ~3k entries at k = 2048 of 128k Gaussian scores
    finish_block: int = 4096
    finish_warps: int = 16
    finish_digit_bits: int = 4  # bits per radix pass of the register finish (16-bin histograms)
    # register finish tier besides 512 and finish_block entries: 2 * finish_block, compiled in
    # when 2k > finish_block (H100, 32x128k k=8192: 68.0 -> 46.3 us, such windows took the
    # blocked passes; compiled in at k=2048 it costs 0.5-1 us)
    finish_tiers: bool = True
    finish_first_digit_bits: int | None = 6  # bits of its first pass (None: finish_digit_bits)
    # the histogram pass counts every sample-th position (1: exact counts); the window it picks
    # is then checked against the scan's exact counts (see `publish_pick`) ...
    sample: int = 8
    # ... in runs of this many consecutive positions (128 bytes of fp32 scores: a
    # position-strided sample touches every 32-byte sector, so it reads the whole row)
    sample_run: int = 32
    # blocks per histogram program, at most (programs that cover several blocks issue fewer
    # histogram atomics; kept so that ~2 programs per SM remain); also caps scan_iters
    iters: int = 4
    # launch the selection kernels (and the decode / sparse kernels) with programmatic dependent
    # launch on Hopper and newer: each kernel's launch overlaps the end of the previous one
    # (`wait_prior`) ...
    use_pdl: bool = True
    pdl_early: bool = True  # ... and let the next kernel launch as soon as the selection kernels start


@dataclass(frozen=True)
class PrefillTile:
    """Tile of one prefill kernel: ``bm`` query rows by ``bn`` keys, ``warps`` warps (a multiple
    of 4), ``stages`` software-pipeline stages (None: Triton's default)."""

    bm: int
    bn: int
    warps: int = 4
    stages: int | None = None


@dataclass(frozen=True)
class PrefillTiles:
    """The tiles of one prefill call: ``search`` (estimate / count / collect / fallback),
    ``fwd``, ``dq``, ``dkdv``."""

    search: PrefillTile
    fwd: PrefillTile
    dq: PrefillTile
    dkdv: PrefillTile


def uniform_tiles(bm: int, bn: int | None = None, warps: int = 4,
                  bwd_stages: int | None = None) -> PrefillTiles:
    """The same tile for every prefill kernel (the backward's with ``bwd_stages``)."""
    t = PrefillTile(bm, bn or bm, warps)
    b = PrefillTile(bm, bn or bm, warps, bwd_stages)
    return PrefillTiles(search=t, fwd=t, dq=b, dkdv=b)


@dataclass(frozen=True)
class PrefillTuning:
    """Top-k prefill: tiles (`ops/topk/triton_prefill.py`) and the threshold search
    (`ops/select/prefill_threshold.py`).

    The kernels need not share a tile: a score is bit-identical under every tile shape and warp
    count (each is one mma chain over the head dim; checked on the H200 for 8 tile shapes,
    mma.sync and wgmma, by scripts/device_prefill_tiles.py and the GPU test
    test_scores_bitwise_tile_independent). H200, 8k tokens, query_head: dq 2.01 -> 1.76 ms,
    dk/dv 3.40 -> 3.26 ms with 128-row tiles; kv_group kernels are fastest on 64 x 64 (its
    forward / dq recompute the group's scores). Under the interpreter (numpy matmul, whose
    rounding depends on the shapes) every kernel of a call takes the same tile (``tiles_cpu``).
    """

    tiles_query_head: PrefillTiles = PrefillTiles(
        search=PrefillTile(64, 64), fwd=PrefillTile(128, 64, 8), dq=PrefillTile(128, 64, 8, 3),
        dkdv=PrefillTile(128, 64, 8, 2))
    tiles_kv_group: PrefillTiles = uniform_tiles(64, bwd_stages=2)
    tiles_wide: PrefillTiles = uniform_tiles(32, bwd_stages=2)  # head_dim > 128 (registers)
    tiles_cpu: PrefillTiles = uniform_tiles(16)  # the interpreter (CPU tensors): one tile for all
    cap: int = 512  # band entries kept per row (power of 2)
    band_frac: float = 0.4  # target keys per count bin, as a fraction of cap
    sample_blocks: int = 8  # key blocks sampled per row block by the estimate (at least) ...
    sample_sigma: float = 0.4  # ... and enough for a rank error of about this * cap keys
    bin_words: int = 3  # count bins = 4 * words - 2 (plus one below and one above)
    probe_words: int = 3  # estimate probe bins = 4 * words - 2
    collect_waves: int = 2  # persistent collect programs per SM
    method: str = "bcc"  # threshold search of the autograd op: "bcc" or "radix"

    def tiles(self, granularity: str) -> PrefillTiles:
        """GPU tiles for head_dim <= 128 by granularity ("query_head" or "kv_group")."""
        return self.tiles_kv_group if granularity == "kv_group" else self.tiles_query_head


@dataclass(frozen=True)
class IndexTuning:
    """Lightning index scores (`ops/topk/triton_index.py`; `scripts/device_index_tiles.py`
    sweeps them)."""

    block: int = 64  # key rows per program (H200 sweep, 2026-12-03: 64 x 2 warps fastest at B1 and B4 128k)
    warps: int = 2  # (heads scored by one fp32 tl.dot instead of the loop: slower, deleted)


@dataclass(frozen=True)
class Tuning:
    """Every family's knobs."""

    decode: DecodeTuning = field(default_factory=DecodeTuning)
    dense: DenseTuning = field(default_factory=DenseTuning)
    select: SelectTuning = field(default_factory=SelectTuning)
    prefill: PrefillTuning = field(default_factory=PrefillTuning)
    index: IndexTuning = field(default_factory=IndexTuning)


DEFAULT = Tuning()
_current = DEFAULT  # the one mutable slot: set only by `tuned`


def current() -> Tuning:
    """The `Tuning` in force (`DEFAULT` outside a `tuned` block)."""
    return _current


@contextmanager
def tuned(tuning: Tuning | None = None, **families) -> Iterator[Tuning]:
    """Run a block under ``tuning`` (default: the one in force) with the named families
    replaced, e.g. ``tuned(select=replace(DEFAULT.select, sample=1))``; restores the previous
    one on exit. Yields the `Tuning` in force inside."""
    global _current
    names = {f.name for f in fields(Tuning)}
    bad = sorted(set(families) - names)
    if bad:
        raise TypeError(f"unknown tuning families {bad}; known: {sorted(names)}")
    base = _current if tuning is None else tuning
    new = Tuning(**{n: families.get(n, getattr(base, n)) for n in names})
    prev, _current = _current, new
    try:
        yield new
    finally:
        _current = prev
