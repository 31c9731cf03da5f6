"""Search: the trial objective and the Ray Tune + Optuna runner under a MACs budget.

``import prunetune.search`` does not import Ray or Optuna; :func:`run_search` does (extra ``search``).
The package is callable: ``prunetune.search(config_or_path, **overrides)`` is
:func:`prunetune.api.search`.
"""

import sys as _sys
import types as _types

from prunetune.search.config import AshaSpec, SearchConfig, SearchSettings, load_search_config, parse_search_config
from prunetune.search.objective import TrialError, TrialResult, check_finite, run_trial
from prunetune.search.progress import Progress, ProgressEvent
from prunetune.search.runner import SearchOutcome, make_space, probe_groups, run_search

__all__ = [
    "AshaSpec", "SearchConfig", "SearchOutcome", "SearchSettings", "TrialError", "TrialResult", "check_finite",
    "load_search_config", "make_space", "parse_search_config", "probe_groups", "run_search", "run_trial",
    "Progress", "ProgressEvent",
]


class _CallableModule(_types.ModuleType):
    """``prunetune.search(config_or_path, **overrides)``: see :func:`prunetune.api.search`."""

    def __call__(self, config, /, **kwargs):
        from prunetune.api import search

        return search(config, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
