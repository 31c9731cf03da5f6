"""Applying a schedule while fine-tuning: soft and hard channel masks, then physical removal.

Hard channels are gated to zero after BN (so BN's bias never leaks), and their conv/linear rows,
BN γ/β and optimizer momentum are zeroed after every step, so they stay exactly zero under SGD with
momentum and weight decay. Soft channels only have their filters scaled (0 = zeroed) at the start of
each epoch; they keep training and may regrow. At the end the last epoch's pruned set is made hard
(topped up by the current weights where that epoch pruned fewer than planned, as SFP's own final
step does), the masked network is reduced to that final plan, and the plan is applied physically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from prunetune.pruning.criteria import get_criterion
from prunetune.pruning.finetune import FinetuneConfig, finetune, recalibrate_bn
from prunetune.pruning.groups import ModelGroups
from prunetune.pruning.macs import analytic_cost
from prunetune.pruning.plan import PruningPlan
from prunetune.pruning.schedules import SCHEDULES, EpochState, checked_state
from prunetune.pruning.surgery import MaskHooks, apply_plan


def plan_ranking(plan: PruningPlan, scores: Mapping[str, Tensor] | None = None) -> dict[str, list[int]]:
    """Per group, the plan's pruned channels, least important first: by ``scores`` when given, else
    the order the plan records (:attr:`PruningPlan.order`), else index order."""
    ranking = {}
    for name in plan.kept:
        pruned = plan.pruned_order(name)
        if scores is not None and name in scores:
            s = scores[name]
            pruned.sort(key=lambda i: (float(s[i]), i))
        ranking[name] = pruned
    return ranking


class ScheduleMasks:
    """A fine-tune callback that applies a schedule's soft and hard masks (see module doc).

    Args:
        ranking: per group, the planned pruned channels, least important first; the first
            ``floor(prune·m)`` are pruned when the schedule does not re-score.
        reselect: allow a re-score over the ``all`` pool to choose *which* channels are pruned;
            off when replaying a fixed plan, so the final architecture is the plan's (re-scoring
            within the ``plan`` pool stays on: it cannot change the architecture).
    """

    def __init__(self, model: nn.Module, groups: ModelGroups, plan: PruningPlan, state_fn: Callable[[int, int], EpochState],
                 ranking: Mapping[str, list[int]], *, rescore_criterion: str = "l2", reselect: bool = True) -> None:
        self.model, self.groups, self.plan = model, groups, plan
        self.state_fn, self.ranking, self.reselect = state_fn, ranking, reselect
        self.rescore = get_criterion(rescore_criterion)
        self.modules = dict(model.named_modules())
        self.targets = {n: plan.channels[n] - len(k) for n, k in plan.kept.items() if plan.channels[n] > len(k)}
        # on the model's device (run_schedule moves it there first): a gate on the CPU was copied to a GPU
        # at every forward of every mask point, each copy a host synchronisation
        device = next(model.parameters(), torch.empty(0)).device
        self.gates = {n: torch.ones(plan.channels[n], device=device) for n in self.targets}
        self._hard_index: dict[str, dict[torch.device, Tensor]] = {}  # hard channels per device, for each step
        self.hard: dict[str, list[int]] = {n: [] for n in self.targets}
        self.pruned: dict[str, list[int]] = {n: [] for n in self.targets}
        self.hooks = MaskHooks(model, groups, self.gates)
        self.optimizer: torch.optim.Optimizer | None = None
        self.last: EpochState | None = None

    # -- callback protocol -------------------------------------------------------------------
    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def on_epoch_start(self, epoch: int, total: int) -> None:
        self.apply(self.state_fn(epoch, total), first=epoch == 0)

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._zero_hard()

    # -- masks -------------------------------------------------------------------------------
    def apply(self, state: EpochState, *, first: bool = False) -> None:
        """Set the masks for one epoch; the first epoch selects by the plan's ranking, later ones
        re-score by weights when the schedule says so."""
        self.last = state
        for name, m in self.targets.items():
            n_prune = math.floor(m * state.prune + 1e-9)
            n_hard = math.floor(n_prune * state.hard + 1e-9)
            order = self._order(name, state.pool) if self._rescores(state, first) else self.ranking[name]
            hard = list(self.hard[name])  # hard channels stay hard (nested sets)
            hard += [c for c in order if c not in hard][: max(0, n_hard - len(hard))]
            soft = [c for c in order if c not in hard][: max(0, n_prune - len(hard))]
            self.hard[name], self.pruned[name] = hard, hard + soft
            self._hard_index.pop(name, None)
            gate = self.gates[name]
            gate.fill_(1.0)
            gate[torch.as_tensor(hard, dtype=torch.long, device=gate.device)] = 0.0
            self._scale_rows(name, soft, state.soft_scale, norms=False)
        self._zero_hard()

    def _rescores(self, state: EpochState, first: bool) -> bool:
        return state.rescore and not first and (self.reselect or state.pool == "plan")

    def finish(self) -> PruningPlan:
        """Make the last pruned set hard, remove the gates, return the final plan.

        The channels removed are those the last epoch pruned. Where that epoch pruned fewer than
        planned (an asymptotic or published-SFP soft end), the rest are the lowest by current
        weights, as SFP's own final pruning step after the last epoch chooses them.
        """
        last = self.last or EpochState(prune=1.0, hard=1.0)
        for name, m in self.targets.items():
            pruned = list(self.pruned[name])
            if len(pruned) < m:
                order = self._order(name, last.pool) if self._rescores(last, False) else self.ranking[name]
                pruned += [c for c in order if c not in pruned][: m - len(pruned)]
            self.hard[name] = pruned
        self.apply(EpochState(prune=1.0, hard=1.0))
        self.hooks.remove()
        kept = dict(self.plan.kept)
        for name in self.targets:
            kept[name] = tuple(sorted(set(range(self.plan.channels[name])) - set(self.hard[name])))
        counts = {n: len(k) for n, k in kept.items()}
        order = {**self.plan.order, **{n: tuple(self.hard[n]) for n in self.targets}}  # as they hardened
        return PruningPlan(kept, dict(self.plan.channels), self.plan.dense, analytic_cost(self.groups, counts),
                           self.plan.input_shape, dict(self.plan.meta), order)

    def _order(self, name: str, pool: str) -> list[int]:
        """Channels a re-score may prune, lowest current weight score first: the planned ones
        (``pool="plan"``, the others after them) or all of them (``pool="all"``). Hard channels
        are kept hard by :meth:`apply` whatever their place here."""
        group = self.groups[name]
        values = [self.rescore.from_weight(self.modules[l].weight.detach(), **self.rescore.resolve({})).cpu()
                  for l in group.out_layers]
        s = torch.stack(values).mean(0)
        planned = set(self.ranking[name]) if pool == "plan" else set()
        return sorted(range(s.numel()), key=lambda i: (pool == "plan" and i not in planned, float(s[i]), i))

    @torch.no_grad()
    def _scale_rows(self, name: str, channels: Sequence[int], scale: float, *, norms: bool,
                    index: dict[torch.device, Tensor] | None = None) -> None:
        """Scale ``channels``' rows of the group's output layers (and with ``norms`` their norms'
        γ and β, zeroing their momentum and gradients). ``index``: the channels' index tensor per
        device, filled as needed and kept by the caller (a copy to a GPU is a host synchronisation)."""
        if not channels:
            return
        index = {} if index is None else index

        def idx(device: torch.device) -> Tensor:
            if device not in index:
                index[device] = torch.as_tensor(list(channels), dtype=torch.long, device=device)
            return index[device]

        group = self.groups[name]
        tensors = []
        for layer in group.out_layers:
            mod = self.modules[layer]
            tensors += [mod.weight] + ([mod.bias] if getattr(mod, "bias", None) is not None else [])
        if norms:
            for norm in group.norms:  # γ and β; a norm with affine=False has neither
                tensors += [t for t in (self.modules[norm].weight, self.modules[norm].bias) if t is not None]
        for t in tensors:
            t[idx(t.device)] *= scale
            if norms and self.optimizer is not None:
                buf = self.optimizer.state.get(t, {}).get("momentum_buffer")
                if buf is not None:
                    buf[idx(buf.device)] = 0.0
            if norms and t.grad is not None:
                t.grad[idx(t.device)] = 0.0

    def _zero_hard(self) -> None:
        """After every training step: the hard channels' rows, norms, momentum and gradients to zero,
        with index tensors made once per epoch (:meth:`apply` drops them when the sets change)."""
        for name, hard in self.hard.items():
            self._scale_rows(name, hard, 0.0, norms=True, index=self._hard_index.setdefault(name, {}))


def run_schedule(
    name: str,
    params: Mapping[str, Any],
    model: nn.Module,
    groups: ModelGroups,
    plan: PruningPlan,
    config: FinetuneConfig,
    *,
    train_batches: Iterable[tuple[Tensor, Tensor]],
    eval_batches: Iterable[tuple[Tensor, Tensor]] | None = None,
    device: str | torch.device = "cpu",
    ranking: Mapping[str, list[int]] | None = None,
    reselect: bool = True,
    callbacks: Sequence[Any] = (),
    recalibration: Iterable[tuple[Tensor, Tensor]] | None = None,
    show_progress: bool = True,
) -> tuple[nn.Module, list[dict[str, float]], PruningPlan]:
    """Fine-tune ``model`` (the dense copy) under schedule ``name`` and return it physically pruned,
    with the per-epoch history and the final plan (which differs from ``plan`` only in *which*
    channels a schedule re-scoring over ``pool: all`` kept, never in how many, and in the recorded
    order its channels went hard)."""
    schedule = SCHEDULES.get(name)
    resolved = schedule.resolve(params)
    ranking = ranking or plan_ranking(plan)
    if schedule.one_shot:  # removal first, then fine-tune the small network: same result, cheaper
        apply_plan(model, plan, groups)
        if config.recalibrate_bn and recalibration is not None:
            recalibrate_bn(model, recalibration, max_batches=config.recalibrate_batches, device=device)
        history = finetune(model, train_batches, config, device=device, eval_batches=eval_batches,
                           callbacks=callbacks, show_progress=show_progress)
        return model, history, plan
    def state(epoch: int, total: int) -> EpochState:
        return checked_state(name, schedule.state, epoch, total, **resolved)

    model.to(device)  # before the gates are made, on its device (finetune would move it later)
    masks = ScheduleMasks(model, groups, plan, state, ranking, rescore_criterion=resolved.get("criterion", "l2"),
                          reselect=reselect)
    try:
        history = finetune(model, train_batches, config, device=device, eval_batches=eval_batches,
                           callbacks=[masks, *callbacks], show_progress=show_progress)
        final = masks.finish()
    finally:
        masks.hooks.remove()
    apply_plan(model, final, groups)
    # the last epochs ran with every pruned channel hard, but each training step keeps 0.9 of the running
    # BN statistics, so after a fine-tune of few steps they still hold much of the soft epochs', when the
    # pruned filters were live (the README's recipe, 2 epochs of about 10 steps: sfp 42% and iterative 15%
    # test accuracy, 97% and 98% re-estimated): re-estimated on the pruned network, as after one-shot removal
    if config.recalibrate_bn and recalibration is not None:
        recalibrate_bn(model, recalibration, max_batches=config.recalibrate_batches, device=device)
    return model, history, final
