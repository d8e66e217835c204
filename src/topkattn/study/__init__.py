"""`topkattn study`: the four claims of arXiv 2512.03494 tested with statistical power.

- `topkattn.study.config`: `StudyConfig` and the quick / full budgets;
- `topkattn.study.stats`: Wilson, McNemar, paired and stratified bootstrap, correlations;
- `topkattn.study.claims`: the experiments through the existing APIs, and their analyses;
- `topkattn.study.verdict`: the decision rules (confirmed / not confirmed / inconclusive);
- `topkattn.study.stages`: resumable stages (one JSON result file each);
- `topkattn.study.report`: study.json, study.md and PNG plots;
- `topkattn.study.runner`: `run_study`, all of it in order.
"""

from topkattn.study.config import FULL, QUICK, StudyConfig
from topkattn.study.runner import StudyResult, run_study

__all__ = ["FULL", "QUICK", "StudyConfig", "StudyResult", "run_study"]
