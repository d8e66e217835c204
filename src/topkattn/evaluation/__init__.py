"""Evaluation of Top-k decoding against full attention: runner and reports."""

from topkattn.evaluation.runner import (
    Cell,
    EvalConfig,
    Summary,
    parse_length,
    read_results,
    report_only,
    run_eval,
)

__all__ = ["Cell", "EvalConfig", "Summary", "parse_length", "read_results", "report_only",
           "run_eval"]
