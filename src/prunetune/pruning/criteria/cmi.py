"""The ``cmi`` criterion: greedy conditional mutual information with matrix-based Rényi entropy
(Vu-Van et al., arXiv 2411.18578), and its cross-layer forms.

The ranking itself is :func:`prunetune.pruning.criteria.renyi.cmi_greedy`; this module keeps the
bounded sample set the ranking needs, links a group to its neighbour for the cross-layer forms and
registers the criterion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prunetune.exceptions import ConfigError
from prunetune.pruning.criteria._common import (
    CheckedCriterion,
    as_maps,
    check_choice,
    check_float,
    check_int,
    no_data,
)
from prunetune.pruning.criteria.base import ACTIVATION, LABELS, FeatureBatch, register
from prunetune.pruning.criteria.information import pool_to
from prunetune.pruning.criteria.renyi import (
    JOINTS,
    SIGMA_RULES,
    GreedyRun,
    conditioning_gram,
    finish_runs,
    finish_sets,
    greedy_run,
)

SETTLE_MEMORY_MB = 1024
"""MiB of channel Gram matrices :meth:`_SampleAccumulator.settle_groups` sets up at once on a GPU
(a wave of groups run in step), and at most a quarter of the device's free memory; a group larger
than this alone is one wave. On the CPU every group is a wave of its own."""


class _SampleAccumulator:
    """Keeps the first ``samples`` images' (pooled) maps and labels: a bounded sample set.

    With a cross-layer ``condition`` calibration links it to the neighbour group's first
    accumulator (:meth:`link`); the ranking is then conditioned on that group's kept channels.
    """

    def __init__(self, name: str, channels: int, p: Mapping[str, Any]) -> None:
        self.name, self.channels, self.p = name, channels, p
        self.maps: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.kept = 0
        self.neighbour: _SampleAccumulator | None = None
        self._greedy: GreedyRun | None = None
        self._result: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    def update(self, batch: FeatureBatch) -> None:
        if batch.labels is None:
            raise ConfigError(
                f"criterion {self.name!r} needs batch.labels (class labels per image)"
            )
        take = min(self.p["samples"] - self.kept, batch.activations.shape[0])
        if take <= 0:
            return
        maps = as_maps(batch.activations[:take], crit=self.name, channels=self.channels)
        self.maps.append(pool_to(maps.to(torch.float64), self.p["max_spatial"]))
        self.labels.append(batch.labels[:take].detach().reshape(take, -1).squeeze(1))
        self.kept += take
        self._greedy, self._result = None, None

    def link(self, neighbour: _SampleAccumulator | None) -> None:
        """Condition on ``neighbour``'s kept channels (``None``: unconditioned)."""
        self.neighbour = neighbour
        self._greedy, self._result = None, None

    def sample_maps(self) -> Tensor:
        """``Tensor[n, C, h, w]`` float64: the kept (pooled) maps."""
        if not self.maps:
            raise no_data(self.name)
        return torch.cat(self.maps)

    def kept_channels(self) -> Tensor:
        """The first max(1, floor(C · ``condition_keep``)) channels of this accumulator's order."""
        k = max(1, math.floor(self.channels * self.p["condition_keep"] + 1e-9))
        return self._run()[1][:k]

    def _condition(self, n: int) -> Tensor | None:
        if self.neighbour is None:
            return None
        maps = self.neighbour.sample_maps()
        if maps.shape[0] != n:
            raise ConfigError(
                f"criterion {self.name!r}: the conditioning layer kept {maps.shape[0]} samples and "
                f"this one {n}; both must see the same calibration batches"
            )
        return conditioning_gram(
            maps, self.neighbour.kept_channels(), joint=self.p["condition_joint"],
            sigma_rule=self.p["sigma_rule"], gamma=self.p["gamma"],
        )

    def greedy(self) -> GreedyRun:
        """This point's greedy ranking, set up (run by :meth:`_run`, or with the group's other points
        by :meth:`settle_group`)."""
        if self._greedy is None:
            maps = self.sample_maps()
            labels = torch.cat([lab.to(maps.device) for lab in self.labels])
            self._greedy = greedy_run(
                maps,
                labels,
                alpha=self.p["alpha"],
                sigma_rule=self.p["sigma_rule"],
                gamma=self.p["gamma"],
                max_steps=self.p["max_steps"],
                stop_gain=self.p["stop_gain"],
                condition=self._condition(maps.shape[0]),
                stop_at_knee=self.p["stop_at_knee"],
            )
        return self._greedy

    @staticmethod
    def settle_group(accs: list[_SampleAccumulator]) -> None:
        """Run the greedies of a group's feature points together: with the knee stop, the group's
        curve is the mean of theirs (``calibration._reduce``), so they stop when *its* knee is
        settled (:func:`~prunetune.pruning.criteria.renyi.settle_knees`), not each at its own."""
        _settle([accs])

    @staticmethod
    def settle_groups(groups: list[list[_SampleAccumulator]]) -> None:
        """Run the greedies of many groups in step (``calibration`` calls this for the whole model
        when no group is conditioned on a neighbour): each step's eigenvalue problems of all of
        them go into one batched solve (:func:`~prunetune.pruning.criteria.renyi.finish_sets`),
        which on a GPU costs about what the largest layer's alone does. The results are those of
        each group alone, up to rounding (:func:`~prunetune.pruning.criteria.renyi.finish_sets`).
        The greedies are set up in waves of at most :data:`SETTLE_MEMORY_MB` of Gram matrices
        (C·n² float64 values a layer), each wave's results kept and its matrices freed before the
        next. On the CPU each group is its own wave: there the shared batches gave nothing (0.9× on
        one thread, ResNet-32 on digits, benchmarks/README.md, "CMI") and the larger working set
        cost a little."""
        _settle(groups)

    def on_accelerator(self) -> bool:
        """Whether the kept maps (and so the greedy) are on a device other than the CPU."""
        return bool(self.maps) and self.maps[0].device.type != "cpu"

    def gram_bytes(self) -> int:
        """Bytes of this point's channel Gram matrices once its greedy is set up (C·n² float64; at α = 2
        their squares as well)."""
        return self.channels * self.kept * self.kept * 8 * (2 if self.p["alpha"] == 2.0 else 1)

    def _run(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self._result is None:
            run = self.greedy()
            finish_runs([run])
            ranking = run.result
            maps = self.sample_maps()
            scores = torch.empty(self.channels, dtype=torch.float64)
            scores[ranking.order] = (
                self.channels - torch.arange(self.channels, dtype=torch.float64)
            ) / self.channels
            steps = torch.tensor(ranking.steps, dtype=torch.long)
            self._result = (scores.to(maps.device), ranking.order, ranking.values, steps)
            self._greedy = None  # its Gram matrices: C·n² values
        return self._result

    def result(self) -> Tensor:
        return self._run()[0]

    def extras(self) -> dict[str, Tensor]:
        _, order, values, steps = self._run()
        return {"cmi_values": values, "cmi_order": order, "cmi_steps": steps}


def _settle(groups: list[list[_SampleAccumulator]]) -> None:
    """:meth:`_SampleAccumulator.settle_groups`: the groups' greedies in step, in waves."""
    wave: list[list[_SampleAccumulator]] = []
    size = 0
    device = next((a.maps[0].device for accs in groups for a in accs if a.on_accelerator()), None)
    budget = 0 if device is None else min(SETTLE_MEMORY_MB * 2**20, _free_bytes(device) // 4)
    for accs in [*groups, []]:  # the empty group ends the last wave
        need = sum(a.gram_bytes() for a in accs if a._result is None)
        if wave and (not accs or size + need > budget):
            _settle_wave(wave)
            wave, size = [], 0
        if accs:
            wave.append(accs)
            size += need


def _free_bytes(device: torch.device) -> int:
    """Free memory on ``device`` (CUDA's own count), or no limit where the device does not say."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # noqa: BLE001 - a driver that cannot say: the fixed bound alone
            pass
    return 2**62


def _settle_wave(wave: list[list[_SampleAccumulator]]) -> None:
    """One wave's greedies in step; each accumulator then keeps its result and drops its greedy (the
    Gram matrices: nothing here holds them once this returns)."""
    sets = []
    for members in wave:
        runs = [a.greedy() for a in members if a._result is None]
        knee = [r for r in runs if r.knee_floor is not None]
        sets += ([knee] if knee else []) + [[r] for r in runs if r.knee_floor is None]
    finish_sets(sets)
    for members in wave:
        for a in members:
            a._run()


CONDITIONS = ("none", "previous", "next", "bidirectional")


@dataclass(frozen=True)
class Cmi(CheckedCriterion):
    """Greedy CMI ranking (Vu-Van et al., arXiv 2411.18578; reconstruction of criteria.md §5.4).

    At step t pick j* = argmax_{j∉S} I_α(Y; X_j | X_S) with matrix-based Rényi α-entropy
    (:mod:`prunetune.pruning.criteria.renyi`): X_j = channel j's flattened map per sample, Gaussian
    kernel with σ per channel by ``sigma_rule`` ("median" pairwise distance, or "silverman"
    s·n^(−1/(4+d)) with s the maps' standard deviation, see
    :func:`~prunetune.pruning.criteria.renyi.kernel_width`) scaled by ``gamma``; Y = delta kernel
    on the labels; X_S = Hadamard joint of the selected channels. score_j = (C − position_j)/C, so
    the first pick scores 1. Ties (CMIs equal up to rounding) go to the lower channel index.

    Not a pure running statistic: the accumulator keeps the first ``samples`` (256) images, each
    map average-pooled to at most ``max_spatial`` (64) pixels (``None``: no pooling), so memory is
    samples·C·max_spatial float64 values plus C·samples² for the Gram matrices, whatever the
    calibration size. α (1.01), kernel width and n are unverified for the paper.

    Cost and stopping. By default the ranking is the full greedy's, exactly (same order, same CMIs
    up to rounding; :func:`~prunetune.pruning.criteria.renyi.cmi_greedy` says how it is made
    faster): about C²/2 eigenvalue problems of samples×samples per layer. It stops early on its own
    only when every later CMI is provably 0 (then the rest follow in index order with value 0, as
    the full greedy would place them). Faster, as options: ``alpha: 2`` (entropies from Frobenius
    norms, no eigenvalue problems; a different Rényi order, so a different ranking), ``stop_gain``
    (stop once a step's best CMI falls below that fraction of the first pick's, the paper's
    "vanished gain") and ``max_steps`` (stop after that many picks); after those two the rest are
    ordered by their CMI at the last evaluated step. benchmarks/README.md measures all three.
    ``stop_at_knee`` (``true``: what the pipeline sets when ``cmi`` is scored only for the
    ``cmi_knee`` cut-off, unless other parameters rule it out) stops once the knee of the CMI curve
    is settled, so ``cmi_knee`` keeps the same counts as after the full greedy at every scale,
    provided no later CMI is below −1e-9 bits (proved at α = 1, measured at 1.01 and 2); the order
    and the values after the stop are not the full greedy's (see
    :func:`~prunetune.pruning.criteria.renyi.cmi_greedy`). It cannot be combined with a
    ``condition`` (a neighbour's condition is the first channels of this order), ``stop_gain`` or
    ``max_steps``.
    ``extras()``: ``cmi_values`` (CMI in bits, selection order), ``cmi_order`` (channel indices)
    and ``cmi_steps`` (how many channels the greedy placed before it stopped).

    Cross-layer forms (``condition``). The paper's abstract says it uses "several formulations of
    CMI to capture correlation among features across different layers" and prunes "in both
    forward and backward directions"; its method section was not available, so everything below
    is a reconstruction (criteria.md §5.4, forms (b) and (c); unverified):

    * ``"none"`` (default): form (a), the layer alone.
    * ``"previous"``: form (b), the forward sweep. A group's CMI is conditioned on T, the kept
      channels of the previous layer: j* = argmax I(Y; X_j | X_S, T). Groups are ranked from the
      first to the last, each on the already ranked previous one.
    * ``"next"``: form (c), the backward sweep, from the last group back, conditioned on the next
      layer's kept channels.
    * ``"bidirectional"``: both sweeps in parallel, meeting in the middle: the first half of the
      groups (model order) use ``"previous"``, the second half ``"next"``; all maps come from the
      unpruned network.

    The previous / next layer of a group and what has none (the stem, the last layer; with
    residual streams also a block's first conv for ``"next"``) are defined by
    :func:`prunetune.pruning.points.neighbour_groups`; a group without one, and a single layer
    scored with :func:`~prunetune.pruning.criteria.score`, is ranked unconditioned. T is the first
    max(1, floor(C' · ``condition_keep``)) channels (0.5) of the neighbour's own ranking, read at
    its first feature point, over the same samples. Its Gram matrix (``condition_joint``):

    * ``"hadamard"`` (default): the Hadamard joint of T's channels, the multivariate matrix-Rényi
      joint of criteria.md §5.3 that X_S uses too, so T acts as channels selected before the first
      step. A channel that duplicates one of T then ranks last.
    * ``"concat"``: one Gaussian Gram matrix of T's maps, each channel divided by its own kernel
      width, concatenated per sample (σ by ``sigma_rule`` on the concatenated vectors).

    NOTE: a Hadamard product of many Gaussian Gram matrices tends to I/n. On a ResNet-20 trained
    on digits (128 samples, ``condition: previous``, ``condition_keep: 0.5``), ``"hadamard"``
    left every CMI below 1e-3 bits in the groups conditioned on T of 16 or 32 channels, so their
    rankings rest on estimator noise, and first picks of 0.02 bits with T of 8 channels;
    ``"concat"`` kept first picks near 0.75 bits in every group, but conditions less sharply (a
    duplicate of one of T's channels no longer reliably ranks last). Use ``"concat"``, or a smaller
    ``condition_keep``, for wide layers.
    """

    def validate(self, params: Mapping[str, Any]) -> None:
        check_float(self.name, params, "alpha", low=0.0, low_open=True)
        check_choice(self.name, params, "sigma_rule", SIGMA_RULES)
        check_float(self.name, params, "gamma", low=0.0, low_open=True)
        check_int(self.name, params, "samples", minimum=2)
        check_int(self.name, params, "max_spatial", minimum=1, optional=True)
        check_int(self.name, params, "max_steps", minimum=1, optional=True)
        if params["stop_gain"] is not None:
            check_float(self.name, params, "stop_gain", low=0.0, high=1.0)
        check_choice(self.name, params, "condition", CONDITIONS)
        check_float(self.name, params, "condition_keep", low=0.0, high=1.0, low_open=True)
        check_choice(self.name, params, "condition_joint", JOINTS)
        if not isinstance(params["stop_at_knee"], bool):
            raise ConfigError(f"criterion {self.name!r}: parameter 'stop_at_knee' must be true or false, "
                              f"but got stop_at_knee={params['stop_at_knee']!r}")
        if params["stop_at_knee"] and (params["condition"] != "none" or params["stop_gain"] is not None
                                       or params["max_steps"] is not None):
            raise ConfigError(f"criterion {self.name!r}: stop_at_knee needs the full greedy's curve and, for a "
                              "neighbour's condition, its order; drop stop_at_knee, or condition, stop_gain and "
                              "max_steps")

    def needs(self, params: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({ACTIVATION, LABELS})

    def stand_ins(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
        """The knee stop approximates the full greedy after the knee and equals it up to there: the full
        greedy's cached scores answer a ``stop_at_knee`` request (a ``cmi_knee`` trial replayed from a
        search whose space also offered ``cmi_cumulative``, which scored the full greedy)."""
        p = self.params(params)
        return ({**p, "stop_at_knee": False},) if p["stop_at_knee"] else ()

    def cross_layer(self, params: Mapping[str, Any], groups: list[str]) -> dict[str, str] | None:
        condition = self.params(params)["condition"]
        if condition == "none":
            return None
        if condition == "bidirectional":
            half = (len(groups) + 1) // 2
            return {g: "previous" if i < half else "next" for i, g in enumerate(groups)}
        return dict.fromkeys(groups, condition)

    def accumulator(self, channels: int, **params: Any) -> _SampleAccumulator:
        return _SampleAccumulator(self.name, channels, self.params(params))


register(
    Cmi(
        name="cmi",
        defaults={
            "alpha": 1.01,
            "sigma_rule": "median",
            "gamma": 1.0,
            "samples": 256,
            "max_spatial": 64,
            "max_steps": None,
            "stop_gain": None,
            "stop_at_knee": False,
            "condition": "none",
            "condition_keep": 0.5,
            "condition_joint": "hadamard",
        },
        summary="CMI (arXiv 2411.18578): greedy argmax I(Y; X_j | X_S), matrix Renyi entropy",
    )
)
