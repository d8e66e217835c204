"""Evaluation tasks: synthetic retrieval (RULER-style) and local-file benchmarks.

`get_task(name)` returns a `Task`. Registered synthetic names are in `TASK_NAMES`; file-backed
benchmarks are named ``longbench_v2:<path>`` and ``helmet:<path>`` (JSON or JSONL files).
"""

from __future__ import annotations

from topkattn.tasks.base import Sample, Task, exact_match_score, normalize
from topkattn.tasks.synthetic import SYNTHETIC_TASKS
from topkattn.errors import InputError

TASK_NAMES: tuple[str, ...] = tuple(SYNTHETIC_TASKS)
FILE_TASKS: tuple[str, ...] = ("longbench_v2", "helmet")


def get_task(name: str) -> Task:
    """The task registered under ``name`` (or ``longbench_v2:<path>`` / ``helmet:<path>``).

    Raises ValueError naming the unknown task and the allowed names.
    """
    key = name.strip()
    if key in SYNTHETIC_TASKS:
        return SYNTHETIC_TASKS[key]()
    prefix, _, path = key.partition(":")
    if prefix in FILE_TASKS and path:
        if prefix == "longbench_v2":
            from topkattn.tasks.longbench_v2 import LongBenchV2Task

            return LongBenchV2Task(path=path)
        from topkattn.tasks.helmet import HelmetTask

        return HelmetTask(path=path)
    allowed = ", ".join(TASK_NAMES) + ", " + ", ".join(f"{p}:<path>" for p in FILE_TASKS)
    raise InputError(f"unknown task {name!r}; allowed: {allowed}")


__all__ = ["FILE_TASKS", "Sample", "TASK_NAMES", "Task", "exact_match_score", "get_task",
           "normalize"]
