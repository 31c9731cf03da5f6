"""Search: the trial objective and the Ray Tune + OptunaSearch runner under a MACs budget.

``import prunetune.search`` does not import Ray or Optuna; :func:`run_search` does (extra ``search``).
"""

from prunetune.search.config import AshaSpec, SearchConfig, SearchSettings, load_search_config, parse_search_config
from prunetune.search.objective import TrialError, TrialResult, check_finite, run_trial
from prunetune.search.runner import SearchOutcome, make_space, probe_groups, run_search

__all__ = [
    "AshaSpec", "SearchConfig", "SearchOutcome", "SearchSettings", "TrialError", "TrialResult", "check_finite",
    "load_search_config", "make_space", "parse_search_config", "probe_groups", "run_search", "run_trial",
]
