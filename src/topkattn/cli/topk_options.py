"""The Top-k attention options of the command line, declared once.

Every command that runs Top-k attention (``eval``, ``train``, ``fidelity``, ``entropy``) takes
its Top-k settings through the option types below, so a flag has one name, one help text and
one meaning everywhere, and ``--help`` lists them together in the "Top-k attention" panel.
A command declares the ones that mean something for it, with its own default::

    def eval_command(k: KListOpt = "8,32,full", sink: SinkOpt = 0, ...):
        base, ks = topk_sweep(k, sink=sink, ...)

`topk_config` turns the option values into the one `TopKConfig` of a run; `topk_sweep` gives a
base `TopKConfig` plus the k settings of a sweep (each becomes a config by
``dataclasses.replace(base, k=..., k_ratio=...)`` where it runs). All value checks are those of
`TopKConfig` and `parse_k`: a bad value stops with one line naming it.

``--phases`` (`PhasesOpt`) is declared here for commands that run both phases; none of the four
above has a choice to offer (eval decodes with Top-k after a dense prefill by protocol, train
runs every sequence as a prefill, fidelity and entropy measure decode steps).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from topkattn.config import TopKConfig, parse_k, parse_k_list

PANEL = "Top-k attention"

KOpt = Annotated[str, typer.Option(
    "--k", rich_help_panel=PANEL,
    help="keys per query: an integer (64), a ratio of the visible context (0.05 or 5%), or "
    "'full' (dense)")]
KListOpt = Annotated[str, typer.Option(
    "--k", rich_help_panel=PANEL,
    help="comma-separated k settings: an integer (keys per query), a ratio such as 0.05 or "
    "5%, or 'full' (dense)")]
SinkOpt = Annotated[int, typer.Option(
    "--sink", rich_help_panel=PANEL,
    help="first positions always kept (attention sinks), in addition to k")]
LocalOpt = Annotated[int, typer.Option(
    "--local", rich_help_panel=PANEL,
    help="most recent positions always kept, in addition to k")]
GranularityOpt = Annotated[str, typer.Option(
    "--granularity", rich_help_panel=PANEL,
    help="'query_head' (one selection per query head) or 'kv_group' (one per KV head, from "
    "the sum of its query heads' scores)")]
SelectorOpt = Annotated[str, typer.Option(
    "--selector", rich_help_panel=PANEL,
    help="selector spec name[:value][,key=value...] ('exact' is exact Top-k by q.k; see "
    "`topkattn info` for the others)")]
DenseLayersOpt = Annotated[str, typer.Option(
    "--dense-layers", rich_help_panel=PANEL,
    help="comma-separated layer indices left dense, e.g. 0,1")]
MinContextOpt = Annotated[int, typer.Option(
    "--min-context", rich_help_panel=PANEL,
    help="below this many visible keys a query attends densely")]
BackendOpt = Annotated[str, typer.Option(
    "--backend", rich_help_panel=PANEL,
    help="auto (Triton kernels on CUDA, reference elsewhere), reference or triton")]
DecodeGraphsOpt = Annotated[bool, typer.Option(
    "--decode-graphs/--no-decode-graphs", rich_help_panel=PANEL,
    help="on CUDA, grow the DynamicCache into buffers with room and replay each layer's "
    "decode attention as one CUDA graph (same outputs, less host time per step)")]
PhasesOpt = Annotated[str, typer.Option(
    "--phases", rich_help_panel=PANEL,
    help="where Top-k applies: decode, prefill or decode,prefill")]


def parse_layers(text: str | tuple | list) -> tuple[int, ...]:
    """``"0,1"`` -> (0, 1); raises `CLIError` naming the value otherwise."""
    from topkattn.cli import CLIError

    if not isinstance(text, str):
        return tuple(text)
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise CLIError(f"--dense-layers must be comma-separated layer indices, got "
                       f"{text!r}") from None


def parse_phases(text: str | tuple | list) -> tuple[str, ...]:
    """``"decode,prefill"`` -> ("decode", "prefill") (checked by `TopKConfig`)."""
    if not isinstance(text, str):
        return tuple(text)
    return tuple(p.strip() for p in text.split(",") if p.strip())


def parse_selector_option(spec: str | None):
    """The selector object of a ``--selector`` spec; None or ``""`` means exact Top-k."""
    from topkattn.selectors import parse_selector

    if spec is None or not str(spec).strip():
        return None
    return parse_selector(str(spec).strip())


def topk_config(k: str = "full", *, sink: int = 0, local: int = 0,
                granularity: str = "query_head", selector: Optional[str] = "exact",
                dense_layers: str | tuple = "", min_context: int = 0, backend: str = "auto",
                phases: str | tuple = "decode", decode_graphs: bool = True) -> TopKConfig:
    """The `TopKConfig` of one k value and the other Top-k options (``--k full``: dense).

    Built once, here; every check is `TopKConfig`'s (and `parse_k`'s for k).
    """
    setting = parse_k(k)
    return TopKConfig(k=setting.k, k_ratio=setting.k_ratio, phases=parse_phases(phases),
                      sink=sink, local=local, dense_layers=parse_layers(dense_layers),
                      min_context=min_context, granularity=granularity,
                      selector=parse_selector_option(selector), backend=backend,
                      decode_graphs=decode_graphs)


def topk_sweep(ks: str, **options) -> tuple[TopKConfig, tuple[str, ...]]:
    """(base `TopKConfig` of the other options, k labels of the comma-separated ``ks``).

    The base is dense (k=None): each label's values (`parse_k`) replace its k and k_ratio
    where the sweep runs. Bad k values fail here, before any model is loaded."""
    labels = tuple(label for label, _ in parse_k_list(ks))
    return topk_config("full", **options), labels


__all__ = ["BackendOpt", "DecodeGraphsOpt", "DenseLayersOpt", "GranularityOpt", "KListOpt", "KOpt", "LocalOpt",
           "MinContextOpt", "PANEL", "PhasesOpt", "SelectorOpt", "SinkOpt", "parse_layers",
           "parse_phases", "parse_selector_option", "topk_config", "topk_sweep"]
