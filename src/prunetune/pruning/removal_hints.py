"""Why the removal probe (:mod:`.removal_probe`) refused a group: a likely cause among the model's own
layers and tensors of the group's width, with its fix, appended to the probe's reason. The probe
detects a removal that is not masking; this module only explains it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn


def likely_cause(model: nn.Module, channels: int, why: str = "") -> str:
    """A likely cause, with its fix, where ``model`` holds a tensor with ``channels`` entries along a
    dimension outside torch's own layers; empty where there is none. First a tensor the dependency
    graph cannot follow, which removal leaves at that width: a plain tensor attribute or a buffer
    (Torch-Pruning follows channels through autograd; every parameter, frozen or not, is traced as
    trainable, :func:`~prunetune.pruning.tp_bridge.build_graph`). Then a parameter outside any layer,
    which Torch-Pruning prunes along its last non-singleton dimension, and which masking the channels
    does not reach. An instance norm that tracks running statistics comes first where ``why`` (what
    the pruned copy raised) names them."""
    unfollowed: list[tuple[str, tuple[int, ...]]] = []
    loose: list[tuple[str, tuple[int, ...]]] = []
    tracked = [name for name, m in model.named_modules()
               if isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats
               and m.num_features == channels]
    if tracked and "running_mean" in why:  # what the pruned copy raised names those statistics
        return (f"; likely cause: {tracked[0]!r}{_more(tracked)}, an instance norm with track_running_stats=True, "
                "whose running statistics Torch-Pruning does not prune (build it with track_running_stats=False, "
                "torch's default, to prune these channels)")
    for prefix, module in model.named_modules():
        own: dict[str, Any] = {k: v for k, v in vars(module).items() if isinstance(v, Tensor)}
        if not type(module).__module__.startswith("torch.nn"):
            own.update(module._buffers)
            own.update((k, p) for k, p in module._parameters.items() if p is not None)
        for key, value in own.items():
            if isinstance(value, Tensor) and channels in value.shape:
                (loose if isinstance(value, nn.Parameter) else unfollowed).append((f"{prefix}.{key}" if prefix else key, tuple(value.shape)))
    if unfollowed:
        (name, shape), more = unfollowed[0], _more(unfollowed)
        return (f"; likely cause: {name}{more}, a tensor of shape {shape} that is not an nn.Parameter, "
                f"which the dependency graph cannot follow, so it keeps its {channels} channels (make it an "
                "nn.Parameter, frozen or not, so that it is pruned with them)")
    if loose:
        (name, shape), more = loose[0], _more(loose)
        dim = max((i for i, n in enumerate(shape) if n > 1), default=0)
        where = f"an nn.Parameter of shape {shape} outside torch's layers, which Torch-Pruning prunes along its last " \
                f"non-singleton dimension (dim {dim})"
        if [i for i, n in enumerate(shape) if n == channels] != [dim]:
            return (f"; likely cause: {name}{more}, {where}, not necessarily its {channels} channels (hold it in "
                    "an nn.Conv2d or nn.Linear, or put its channels last)")
        return (f"; likely cause: {name}{more}, {where}, and which masking the channels does not reach (a bias "
                "added to a layer's output is best that layer's own bias)")
    return ""


def _more(found: Sequence[Any]) -> str:
    return f" (and {len(found) - 1} more)" if len(found) > 1 else ""
