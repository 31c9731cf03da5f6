"""prunetune: automatic CNN filter pruning under a MACs budget.

The core (``prunetune.pruning``, ``prunetune.models``, ``prunetune.data``) needs only torch; the
search (Ray Tune + Optuna) and tracking (MLflow) are imported only by the commands that use them.
"""

from prunetune.checkpoint import load_pruned, save_pruned
from prunetune.deployment import deploy
from prunetune.exceptions import PrunetuneError
from prunetune.models import create_model, list_models
from prunetune.version import __version__

__all__ = [
    "PrunetuneError", "__version__", "create_model", "deploy", "list_models", "load_pruned", "save_pruned",
]
