"""The criterion contract and its registry.

A criterion turns one group's evidence into one score per channel, higher = keep. Evidence comes in
two forms, and a criterion implements whichever it needs:

* **weights** (``needs`` contains ``"weight"``): :meth:`Criterion.from_weight` receives one member
  layer's output-channel weight, shape ``C×…`` (a conv weight ``C×Cin×k×k``, a linear weight
  ``C×Cin`` or a BN scale ``C``), and returns ``Tensor[C]``.
* **feature maps** (``needs`` contains ``"activation"``): :meth:`Criterion.accumulator` returns a
  streaming :class:`Accumulator`. Calibration feeds it one batch at a time (:class:`FeatureBatch`)
  and calls :meth:`Accumulator.result` once at the end. Accumulators keep running statistics only,
  never the raw activations of earlier batches (the one documented exception is ``cmi``, which keeps
  a fixed-size sample set, bounded by its ``samples`` parameter, not by the calibration size).

Call order for activation criteria: ``acc = crit.accumulator(channels, **params)``; then
``acc.update(batch)`` for every calibration batch; then ``acc.result()`` and ``acc.extras()``.

A group with several member outputs (a residual stream) gets one evaluation per member; the scores
are then averaged across members (Torch-Pruning's "mean" group reduction).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from prunetune._registry import Registry
from prunetune.exceptions import ConfigError

WEIGHT = "weight"
ACTIVATION = "activation"
LABELS = "labels"
GRADIENT = "gradient"


@dataclass
class FeatureBatch:
    """One calibration batch seen at one member output.

    Attributes:
        activations: ``Tensor[B, C, H, W]`` (or ``[B, C]``) after BN and the activation.
        preactivations: the BN output before the activation (same shape); ``None`` if unknown.
        labels: ``Tensor[B]`` class labels, or ``None``.
        gradients: d(loss)/d(preactivations), same shape, only when a criterion needs gradients.
    """

    activations: Tensor
    preactivations: Tensor | None = None
    labels: Tensor | None = None
    gradients: Tensor | None = None


class Accumulator(Protocol):
    """Streaming per-channel statistics for one member output."""

    def update(self, batch: FeatureBatch) -> None:
        """Fold one batch into the running statistics."""

    def result(self) -> Tensor:
        """``Tensor[C]`` of scores, higher = keep."""

    def extras(self) -> dict[str, Tensor]:
        """Extra per-channel curves worth keeping (e.g. CMI values in selection order)."""


@dataclass(frozen=True)
class Criterion:
    """Base class of registered criteria. Subclasses override what they need.

    Attributes:
        name: registry name.
        defaults: every parameter the criterion takes, with its default. Unknown parameters are
            rejected, so a typo in a recipe never passes silently.
        summary: one line: the paper and the formula.
    """

    name: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""

    def needs(self, params: Mapping[str, Any]) -> frozenset[str]:
        """Which evidence the criterion needs under ``params``."""
        raise NotImplementedError(f"criterion {self.name!r} does not say which evidence it needs; define "
                                  "needs(self, params) returning e.g. frozenset({WEIGHT}) or frozenset({ACTIVATION})")

    def from_weight(self, weight: Tensor, **params: Any) -> Tensor:
        raise ConfigError(f"criterion {self.name!r} does not score from weights")

    def accumulator(self, channels: int, **params: Any) -> Accumulator:
        raise ConfigError(f"criterion {self.name!r} does not score from feature maps")

    def bn_mode(self, params: Mapping[str, Any]) -> str:
        """BN mode of the calibration pass this criterion reads: ``"eval"`` (running statistics,
        the default) or ``"train"`` (batch statistics; the running statistics are restored)."""
        return "eval"

    def batch_dependent(self, params: Mapping[str, Any]) -> bool:
        """Whether the scores depend on how the calibration set is split into batches (then the
        calibration batch size is part of the score cache fingerprint)."""
        return False

    def stand_ins(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
        """Other resolved parameters whose cached scores answer a request for ``params`` at least as
        well (the score cache tries them when ``params`` has no entry of its own). Default: none."""
        return ()

    def cross_layer(self, params: Mapping[str, Any], groups: list[str]) -> dict[str, str] | None:
        """For criteria that condition on a neighbouring group: ``{group: "previous" | "next"}``
        over ``groups`` (in model order); calibration then calls ``acc.link(neighbour_acc)`` on
        each accumulator before any batch. ``None`` (the default): groups are independent."""
        return None

    def weight_source(self, params: Mapping[str, Any]) -> str:
        """Which tensor a weight criterion reads: ``"conv"`` (the layer weight) or ``"bn"`` (BN scale)."""
        return "conv"

    def resolve(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Merge ``params`` into the defaults; unknown keys raise :class:`ConfigError`."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ConfigError(
                f"criterion {self.name!r} has no parameter {unknown[0]!r}; its parameters: {known}"
            )
        return {**self.defaults, **params}


CRITERIA: Registry[Criterion] = Registry("criterion", pluggable=True, entry=Criterion,
                                         how="subclass Criterion and call criteria.register(MyCriterion(name))")


def register(criterion: Criterion) -> Criterion:
    """Add ``criterion`` to the registry under its name."""
    CRITERIA.register(criterion.name, criterion)
    return criterion


def get_criterion(criterion: str | Criterion) -> Criterion:
    """Accept a registered name or a :class:`Criterion` object."""
    return criterion if isinstance(criterion, Criterion) else CRITERIA.get(criterion)


def score(
    name: str | Criterion,
    *,
    feature_maps: Tensor | None = None,
    weight: Tensor | None = None,
    labels: Tensor | None = None,
    gradients: Tensor | None = None,
    preactivations: Tensor | None = None,
    **params: Any,
) -> Tensor:
    """Score channels with one criterion, as a library function on tensors.

    Args:
        name: a registered criterion name or object.
        feature_maps: ``Tensor[N, C, H, W]`` or ``Tensor[N, C]`` (after the activation) for
            activation criteria.
        weight: ``Tensor[C, ...]`` for weight criteria.
        labels: ``Tensor[N]`` integer class labels (``cmi``).
        gradients: d(loss)/d(preactivations), shaped as ``feature_maps`` (``taylor``).
        preactivations: BN outputs before the activation (``taylor``); defaults to ``feature_maps``.
        **params: the criterion's parameters (see its ``defaults``).

    Returns:
        ``Tensor[C]``, higher = keep.

    Raises:
        ConfigError: a tensor given (of those the criterion's kind reads) is of another shape or
            dtype, has an empty dimension, holds NaN or inf, or is on the meta device
            (:func:`check_evidence`), before the criterion runs.
    """
    crit = get_criterion(name)
    resolved = crit.resolve(params)
    needs = crit.needs(resolved)
    if WEIGHT in needs:
        if weight is None:
            raise ConfigError(f"criterion {crit.name!r} needs weight=Tensor[C, ...]")
        check_evidence(crit.name, "weight", weight, "Tensor[C, ...] with no empty dimension",
                       lambda w: w.dim() >= 1)
        return crit.from_weight(weight, **resolved)
    if feature_maps is None:
        raise ConfigError(f"criterion {crit.name!r} needs feature_maps=Tensor[N, C, H, W]")
    if LABELS in needs and labels is None:
        raise ConfigError(f"criterion {crit.name!r} needs labels=Tensor[N]")
    if GRADIENT in needs and gradients is None:
        raise ConfigError(f"criterion {crit.name!r} needs gradients= (d loss / d preactivations)")
    check_evidence(crit.name, "feature_maps", feature_maps, "Tensor[N, C, H, W] or Tensor[N, C] with no empty "
                   "dimension", lambda x: x.dim() in (2, 4))
    shape = feature_maps.shape
    for arg, x in (("gradients", gradients), ("preactivations", preactivations)):
        if x is not None:
            check_evidence(crit.name, arg, x, f"Tensor{list(shape)} (the shape of feature_maps)",
                           lambda t: t.shape == shape)
    if labels is not None:
        check_evidence(crit.name, "labels", labels, f"Tensor[{shape[0]}] (one class label per feature map)",
                       lambda y: y.shape == shape[:1], integer=True)
    acc = crit.accumulator(feature_maps.shape[1], **resolved)
    acc.update(
        FeatureBatch(
            activations=feature_maps,
            preactivations=preactivations if preactivations is not None else feature_maps,
            labels=labels,
            gradients=gradients,
        )
    )
    return acc.result()


def check_evidence(crit: str, arg: str, x: Tensor, expected: str, fits: Callable[[Tensor], bool], *,
                   integer: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``x``, argument ``arg`` of :func:`score`, is a tensor of the
    ``expected`` shape (``fits``) and no empty dimension, real (``integer``: of an integer dtype),
    finite and not on the meta device. Only :func:`score` checks this much: calibration's
    accumulators see tensors the model made and make no extra pass over them."""
    want = f"{'an integer' if integer else 'a finite real'} {expected}"
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"criterion {crit!r}: {arg} must be {want}, got {type(x).__name__}")
    got = f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
    wrong_dtype = x.is_complex() or integer and (x.is_floating_point() or x.dtype == torch.bool)
    if x.is_meta:
        got += " on the meta device (no values)"
    elif fits(x) and x.numel() and not wrong_dtype:
        if bool(torch.isfinite(x).all()):
            return
        got += " holding NaN or inf"
    raise ConfigError(f"criterion {crit!r}: {arg} must be {want}, got {got}")


def check_weight(weight: Tensor, name: str) -> Tensor:
    """Return ``weight`` flattened to ``C×d`` float64, or raise a clear error."""
    if not isinstance(weight, torch.Tensor) or weight.dim() < 1 or weight.shape[0] == 0:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ConfigError(f"criterion {name!r} needs weight as Tensor[C, ...], got {shape}")
    return weight.detach().reshape(weight.shape[0], -1).to(torch.float64)
