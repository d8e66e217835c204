"""Evaluation tasks: synthetic retrieval and aggregation (RULER-style) and local-file benchmarks.

`get_task(name)` returns a `Task`. Registered synthetic names: `TASK_NAMES` (``passkey``,
``niah_multikey``, ``vartrack``, ``kv``: one answer each, so training's ``synthetic:`` data
specs take them) and `AGGREGATION_NAMES` (RULER's ``cwe``, ``fwe``: several gold words, scored
by the fraction found); `ALL_TASK_NAMES` is both.
File-backed benchmarks (JSON or JSONL files):

- ``longbench_v2:<path>``: LongBench v2, 0-shot prompt; ``longbench_v2_cot:<path>``: its
  chain-of-thought prompt (`topkattn.tasks.longbench_v2`);
- ``helmet:<category>:<path>`` or ``helmet:<category>@<setting>:<path>``: one HELMET dataset
  with HELMET's prompt and metric, ``<setting>`` one of 4k ... 128k
  (`topkattn.tasks.helmet`); ``helmet:<path>``: the generic HELMET-style reader.
"""

from __future__ import annotations

import re

from topkattn.errors import InputError
from topkattn.tasks.base import Sample, Task, exact_match_score, normalize
from topkattn.tasks.ruler import AGGREGATION_TASKS
from topkattn.tasks.synthetic import SYNTHETIC_TASKS

_REGISTRY = {**SYNTHETIC_TASKS, **AGGREGATION_TASKS}
TASK_NAMES: tuple[str, ...] = tuple(SYNTHETIC_TASKS)
AGGREGATION_NAMES: tuple[str, ...] = tuple(AGGREGATION_TASKS)
ALL_TASK_NAMES: tuple[str, ...] = TASK_NAMES + AGGREGATION_NAMES
FILE_TASKS: tuple[str, ...] = ("longbench_v2", "longbench_v2_cot", "helmet")
_CATEGORY = re.compile(r"([A-Za-z][\w]*)(?:@(\w+))?")


def get_task(name: str) -> Task:
    """The task registered under ``name``, or a file benchmark (see the module docstring).

    Raises ValueError naming the unknown task (or HELMET category) and the allowed names.
    """
    key = name.strip()
    if key in _REGISTRY:
        return _REGISTRY[key]()
    prefix, _, rest = key.partition(":")
    if prefix in ("longbench_v2", "longbench_v2_cot") and rest:
        from topkattn.tasks.longbench_v2 import LongBenchV2Task

        return LongBenchV2Task(path=rest, cot=prefix == "longbench_v2_cot")
    if prefix == "helmet" and rest:
        return _helmet(rest)
    allowed = (", ".join(ALL_TASK_NAMES) + ", longbench_v2:<path>, longbench_v2_cot:<path>, "
               "helmet:<category>[@<setting>]:<path>, helmet:<path>")
    raise InputError(f"unknown task {name!r}; allowed: {allowed}")


def _helmet(rest: str) -> Task:
    """``<category>[@<setting>]:<path>`` -> HelmetCategoryTask; a bare ``<path>`` -> HelmetTask.

    A first part that looks like a name (letters, digits, ``_``, optional ``@setting``) and is
    followed by ``:<path>`` is a category; anything else is a path.
    """
    from topkattn.tasks.helmet import HelmetCategoryTask, HelmetTask

    head, sep, path = rest.partition(":")
    m = _CATEGORY.fullmatch(head)
    if sep and path and m:
        return HelmetCategoryTask(category=m.group(1), setting=m.group(2), path=path)
    return HelmetTask(path=rest)


__all__ = ["AGGREGATION_NAMES", "ALL_TASK_NAMES", "FILE_TASKS", "Sample", "TASK_NAMES", "Task", "exact_match_score", "get_task",
           "normalize"]
