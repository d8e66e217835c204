"""Evaluation of Top-k decoding against full attention: runner, shards and reports."""

from topkattn.evaluation.records import read_folder
from topkattn.evaluation.runner import (
    Cell,
    EvalConfig,
    EvalInterrupted,
    Summary,
    parse_length,
    read_results,
    report_only,
    run_eval,
)
from topkattn.evaluation.shard import Shard

__all__ = ["Cell", "EvalConfig", "EvalInterrupted", "Shard", "Summary", "parse_length",
           "read_folder", "read_results", "report_only", "run_eval"]
