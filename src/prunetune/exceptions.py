"""Project exception hierarchy.

Every error a user can cause derives from :class:`PrunetuneError`; the CLI turns these into one line
on stderr and exit code 2. Messages state what was expected, echo the bad value and name the fix.
"""

from __future__ import annotations


class PrunetuneError(Exception):
    """Base class of every user-facing prunetune error."""


class UnknownNameError(PrunetuneError, KeyError):
    """A name looked up in a registry does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(PrunetuneError, ValueError):
    """A recipe, search config or argument is malformed."""


class UntrustedCodeError(ConfigError):
    """A recipe or config names Python code to run, without the user's opt-in (or code never allowed)."""


class UntrustedStateError(PrunetuneError, ValueError):
    """Saved state that would be unpickled (a search's resume state) is not the one the search wrote."""


class SearchLockedError(ConfigError):
    """Another search process is running the same experiment (its lock file names the pid)."""


class InvalidPlanError(PrunetuneError, ValueError):
    """A pruning plan does not fit the model it is applied to."""


class BudgetInfeasibleError(PrunetuneError, ValueError):
    """A MACs budget cannot be reached under the keep rules."""


class BudgetExceededError(PrunetuneError, RuntimeError):
    """A pruned network, counted, is above the MACs target its plan was made for."""


class DivergedError(PrunetuneError, FloatingPointError):
    """Training diverged: its loss is not finite (NaN or inf)."""


class DeployError(PrunetuneError, RuntimeError):
    """A deployed file does not compute what the PyTorch model computes."""


class CheckpointError(PrunetuneError, ValueError):
    """A checkpoint is missing or does not fit the model."""


class DataError(PrunetuneError, ValueError):
    """A dataset is missing, malformed or cannot be loaded."""


class MissingExtraError(PrunetuneError, ImportError):
    """An optional dependency is not installed."""


class TrackingError(PrunetuneError, ValueError):
    """An MLflow experiment or run is missing or unusable."""
