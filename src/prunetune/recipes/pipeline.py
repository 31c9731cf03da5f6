"""One recipe, end to end: data → dense model → scores → plan → schedule + fine-tune → evaluate.

The steps are separate functions so that a search prepares the shared part once (:func:`prepare`,
:func:`score_table`) and runs only :func:`~prunetune.recipes.planning.build_plan` and
:func:`train_pruned` per trial.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunetune._machine import check_input_fits
from prunetune._paths import check_folder_shape
from prunetune._safety import is_user_code
from prunetune._text import exception_line, listed
from prunetune.data import DataSplits, TensorSplit, calibration_subset, load_dataset, make_loader, split_fingerprint
from prunetune.exceptions import CheckpointError, ConfigError
from prunetune.models import create_model
from prunetune._modes import modes_kept
from prunetune.models.registry import check_float32, train_forward
from prunetune.pruning.budget_check import check_pruned_macs
from prunetune.pruning.finetune import evaluate, finetune
from prunetune.pruning.groups import ModelGroups, find_groups
from prunetune.pruning.macs import Cost, count_cost
from prunetune.pruning.plan import PruningPlan
from prunetune.pruning.masking import plan_ranking, run_schedule
from prunetune.pruning.scores import CACHE_ENV, CalibrationSettings, ScoreTable, compute_scores, default_cache_dir, weight_scores
from prunetune.recipes.checkpoint import load_checkpoint, save_dense
from prunetune.recipes.planning import build_plan, check_allocation, recipe_criteria
from prunetune.recipes.pruned_file import save_pruned_with_plan
from prunetune.recipes.schema import Recipe
from prunetune.version import __version__

log = logging.getLogger("prunetune")


@dataclass
class Base:
    """What every trial of one recipe shares, computed once: data, the trained dense model, groups."""

    recipe: Recipe
    splits: DataSplits
    model: nn.Module
    groups: ModelGroups
    device: torch.device
    dense: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.groups.input_shape

    def loader(self, split: str, *, train: bool = False, seed: int = 0, batch_size: int | None = None):
        data = getattr(self.splits, split)
        return make_loader(data, batch_size=batch_size or self.recipe.data.batch_size, shuffle=train,
                           augment=train and self.splits.augment, device=self.device, seed=seed)


@dataclass
class PruneResult:
    dense: dict[str, float]
    pruned: dict[str, float]
    plan: PruningPlan
    history: list[dict[str, float]]
    model: nn.Module
    scores_cached: bool | None
    timings: dict[str, float]
    out: Path | None = None
    plan_path: Path | None = None

    def summary(self) -> dict[str, Any]:
        return {"dense": self.dense, "pruned": self.pruned,
                "plan": str(self.plan_path) if self.plan_path else None,
                "scores_cached": self.scores_cached, "timings": self.timings}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use device: cpu or auto")
    return torch.device(name)


def load_data(recipe: Recipe) -> DataSplits:
    spec = recipe.data
    return load_dataset(spec.name, root=recipe.resolve_path(spec.root), download=spec.download,
                        split_seed=spec.split_seed, **spec.params)


@dataclass
class Inputs:
    """A recipe's data, its (untrained) model and the model's groups: what the checks need, before
    any training. ``data_s``: the seconds data and model took; ``t_data``: when they were ready."""

    splits: DataSplits
    model: nn.Module
    groups: ModelGroups
    device: torch.device
    data_s: float
    t_data: float


def load_inputs(recipe: Recipe) -> Inputs:
    """Load the data, build the model, find its groups (the Torch-Pruning graph); no training."""
    t0 = time.perf_counter()
    cal = recipe.calibration
    if cal.use_cache:  # a file there failed only when the brief training was saved, after it
        where = "calibration.cache_dir" if cal.cache_dir else f"${CACHE_ENV} (or ~/.cache/prunetune)"
        check_folder_shape(Path(cal.cache_dir) if cal.cache_dir else default_cache_dir(), f"the cache folder ({where})")
    device = resolve_device(recipe.device)
    splits = load_data(recipe)
    if splits.in_channels != recipe.model.in_channels or splits.num_classes != recipe.model.num_classes:
        raise ConfigError(
            f"data {recipe.data.name!r} has {splits.in_channels} input channels and {splits.num_classes} classes"
            f"{_named(splits.classes)}, the model is set to in_channels={recipe.model.in_channels}, "
            f"num_classes={recipe.model.num_classes}; fix the recipe's model section")
    batch, side = recipe.data.batch_size, splits.image_size  # a lazy dataset decodes image_size at each batch
    check_input_fits(batch, (splits.in_channels, side, side), f"a batch of {batch} images of {side}x{side}",
                     "give a smaller image_size or data.batch_size")
    splits = splits_to(splits, device)
    torch.manual_seed(recipe.pretrain.seed)  # the dense initialisation (it matters without a checkpoint)
    spec = recipe.model
    model = create_model(spec.name, num_classes=spec.num_classes, in_channels=spec.in_channels,
                         allow_code=recipe.allow_code, **spec.kwargs)
    t_data = time.perf_counter()
    shape = (splits.in_channels, splits.image_size, splits.image_size)
    trains = recipe.finetune.epochs > 0 or (not spec.checkpoint and recipe.pretrain.epochs > 0)
    check_trainable(model, spec.name, shape, splits.num_classes, trains=trains)
    groups = find_groups(model, shape)
    return Inputs(splits, model, groups, device, t_data - t0, t_data)


def _named(classes: tuple[str, ...], shown: int = 8) -> str:
    """`` (a, b, ...)``: the class names a dataset gave, the first ``shown`` of them; '' where it gave none."""
    return f" ({listed(classes, shown)})" if classes else ""


def check_trainable(model: nn.Module, name: str, input_shape: tuple[int, ...], num_classes: int, *,
                    trains: bool = True) -> None:
    """Refuse, in one line and before any training, a model that takes a batch of ``input_shape``
    images but does not return its logits as one ``Tensor[B, num_classes]`` (a tuple of logits and
    features failed in the first loss; a dict input deep in the dependency graph), or whose every
    parameter is frozen (the first backward pass failed). A model that fails in train mode too, and,
    where it will be trained (``trains``), one whose train-mode output is not its logits (an Inception
    net's ``(logits, aux)`` failed only at the first fine-tuning step, after the scoring). The
    train-mode check leaves the BN statistics, the modes and the random numbers as they were."""
    check_float32(model, f"model {name!r}")
    params = list(model.parameters())
    if params and not any(p.requires_grad for p in params):
        raise ConfigError(f"model {name!r} has every parameter frozen (requires_grad=False): nothing could be "
                          "fine-tuned; unfreeze the layers to prune")
    x = torch.zeros(2, *input_shape, device=params[0].device if params else "cpu")  # where the factory put it
    try:
        with torch.no_grad(), modes_kept(model):
            out = model.eval()(x)
    except Exception as exc:  # noqa: BLE001 - whatever the model raises on an image batch
        raise ConfigError(f"model {name!r} fails on a batch of images of shape {tuple(x.shape)} "
                          f"({type(exc).__name__}: {exception_line(exc)}); prunetune calls model(x) with x a "
                          "Tensor[B, C, H, W]") from None
    if (got := _not_logits(out, 2, num_classes)) is not None:
        raise ConfigError(f"model {name!r} returns {got} for a batch of 2 images; prunetune needs the logits "
                          f"as one Tensor[B, {num_classes}] (return only the logits from forward)")
    try:  # fine-tuning, BN re-estimation and the search's proxy all run the model in train mode
        out = train_forward(model, x)
    except Exception as exc:  # noqa: BLE001 - whatever the model raises in train mode
        raise ConfigError(f"model {name!r} fails in train mode on a batch of images of shape {tuple(x.shape)} "
                          f"({type(exc).__name__}: {exception_line(exc)}); prunetune also runs model.train()(x)"
                          ) from None
    if trains and (got := _not_logits(out, 2, num_classes)) is not None:
        raise ConfigError(f"model {name!r} returns {got} in train mode for a batch of 2 images; training needs "
                          f"the logits as one Tensor[B, {num_classes}] (turn auxiliary outputs off, e.g. "
                          "aux_logits=False)")


def _not_logits(out: Any, batch: int, num_classes: int) -> str | None:
    """What ``out`` is, where it is not a ``Tensor[batch, num_classes]``; None where it is."""
    if not isinstance(out, torch.Tensor):
        return f"a {type(out).__name__}"
    return None if tuple(out.shape) == (batch, num_classes) else f"shape {tuple(out.shape)}"


def dense_base(recipe: Recipe, inputs: Inputs, *, show_progress: bool = True) -> Base:
    """The trained dense model (checkpoint, or brief cached training) and its metrics, on ``inputs``.
    Run :func:`check_allocation` first: this is the expensive part."""
    model, device, spec = inputs.model, inputs.device, recipe.model
    base = Base(recipe, inputs.splits, model, inputs.groups, device, {})
    if spec.checkpoint:
        load_checkpoint(model, recipe.resolve_path(spec.checkpoint), model_name=f"model {spec.name!r}",
                        data_split=inputs.splits.split)
    else:
        _pretrained_dense(base, show_progress)
    model.to(device).eval()
    cost = count_cost(model, base.groups.input_shape)
    base.dense = {"macs": cost.macs, "params": cost.params,
                  "accuracy": evaluate(model, base.loader("test"), device=device)}
    base.timings = {"data_s": inputs.data_s, "dense_s": time.perf_counter() - inputs.t_data}
    return base


def prepare(recipe: Recipe, *, show_progress: bool = True) -> Base:
    """Load data and the dense model (checkpoint, or brief cached training), find groups, evaluate:
    :func:`load_inputs` → :func:`check_allocation` (a bad group name or budget fails before any
    training) → :func:`dense_base`. A search runs the same steps with its space built between the
    first two."""
    inputs = load_inputs(recipe)
    check_allocation(recipe, inputs.groups)
    return dense_base(recipe, inputs, show_progress=show_progress)


def splits_to(splits: DataSplits, device: torch.device | str) -> DataSplits:
    """``splits`` with its in-memory (:class:`TensorSplit`) parts on ``device``; lazy datasets stay."""
    device = torch.device(device)
    moved = {s: getattr(splits, s) for s in ("train", "val", "test")}
    return dataclasses.replace(splits, **{s: v.to(device) if isinstance(v, TensorSplit) else v
                                          for s, v in moved.items()})


def _pretrained_dense(base: Base, show_progress: bool) -> None:
    """Train the dense model briefly (no checkpoint given), cached by everything that shapes it."""
    r = base.recipe
    path = dense_cache_path(base) if r.calibration.use_cache else None  # the key hashes the training data
    if path is not None and path.is_file():
        try:  # checked before any weight is copied: a refusal leaves the model as initialised
            load_checkpoint(base.model, path)
            log.info("dense model: loaded the cached brief training from %s", path)
            return
        except CheckpointError as exc:  # a torn or foreign entry: train again and replace it
            log.warning("dense model: the cached brief training is damaged, training it again (%s)", exc)
    cfg = r.pretrain.finetune_config()
    log.info("dense model: no checkpoint given, training it for %d epochs on %s", cfg.epochs, r.data.name)
    finetune(base.model, base.loader("train", train=True, seed=r.pretrain.seed, batch_size=cfg.batch_size), cfg,
             device=base.device, show_progress=show_progress, section="pretrain")
    if path is not None:
        save_dense(path, base.model, data_split=base.splits.split)


def dense_cache_path(base: Base) -> Path:
    """Where the brief training of ``base``'s dense model is cached: keyed by the model, data and
    pretrain sections, the training split's content and, for a ``package.module:function`` model, its
    source file. The recipe's text alone named the data and the code: the same recipe in another folder
    (a relative root, other files) or after an edit of the model's code got the other's model."""
    r = base.recipe
    key = json.dumps({"model": r.model.__dict__, "data": r.data.to_dict(), "pretrain": r.pretrain.__dict__,
                      "train": split_fingerprint(base.splits.train), "code": _code_fingerprint(r.model.name),
                      "version": __version__}, sort_keys=True, default=str)
    root = Path(r.calibration.cache_dir) if r.calibration.cache_dir else default_cache_dir()
    return root / "dense" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"


def _code_fingerprint(name: str) -> str | None:
    """A hash of the source file of a ``package.module:function`` model (None for other names, or where
    the module has no readable source file)."""
    if not is_user_code(name):
        return None
    import importlib.util

    try:
        spec = importlib.util.find_spec(name.partition(":")[0])
        origin = spec.origin if spec is not None else None
        return hashlib.sha256(Path(origin).read_bytes()).hexdigest()[:16] if origin else None
    except (ImportError, ValueError, OSError):
        return None


def score_table(base: Base, criteria: Mapping[str, Mapping[str, Any] | None], *, show_progress: bool = True,
                blended: Collection[str] | None = None) -> ScoreTable:
    """Scores for ``criteria`` (name -> params) on the base model, from the cache when possible.
    ``blended``: the criteria whose scores are used (default: all); for the others only their extras
    count, and a cached stand-in may answer them (:func:`~prunetune.pruning.scores.compute_scores`)."""
    cal = base.recipe.calibration
    split = getattr(base.splits, cal.split)
    subset = calibration_subset(split, size=cal.size, seed=cal.seed)
    digest = f"{split_fingerprint(subset)}:{cal.size}:{cal.seed}"
    return compute_scores(
        base.model, base.groups, criteria,
        calibration=lambda: make_loader(subset, batch_size=cal.batch_size, device=base.device),
        calibration_digest=digest, settings=CalibrationSettings(cal.activation, cal.batch_size, cal.point),
        cache_dir=cal.cache_dir, use_cache=cal.use_cache, device=base.device, show_progress=show_progress,
        extras_only=() if blended is None else set(criteria) - set(blended),
    )


def train_pruned(recipe: Recipe, base: Base, plan: PruningPlan, *,
                 callbacks: Sequence[Any] = (), show_progress: bool = True,
                 ) -> tuple[nn.Module, list[dict[str, float]], PruningPlan]:
    """Copy the dense model and run the recipe's schedule: masks, fine-tune, physical removal.

    Returns the pruned model, the per-epoch history and the final plan. A schedule re-scoring over
    ``pool: all`` may change *which* channels are kept (never how many) unless the recipe carries its
    plan; the final plan records the order its channels were pruned in.
    """
    torch.manual_seed(recipe.seed)
    model = copy.deepcopy(base.model).to(base.device)
    # The order gradual schedules prune in: the plan's own (recorded when it was made, so a replay
    # prunes exactly as the trial did), else the dense weights' L2 norms (a plan made elsewhere).
    ranking = plan_ranking(plan, None if plan.order else weight_scores(model, base.groups, "l2", {}))
    return run_schedule(
        recipe.schedule.name, recipe.schedule.params, model, base.groups, plan, recipe.finetune,
        train_batches=base.loader("train", train=True, seed=recipe.seed, batch_size=recipe.finetune.batch_size),
        eval_batches=base.loader("val"), device=base.device, ranking=ranking, reselect=recipe.plan is None,
        callbacks=callbacks, recalibration=base.loader("train", train=True, seed=recipe.seed + 1),
        show_progress=show_progress,
    )


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` CPU threads (None: as it is); the count is restored after.

    A count above this machine's CPUs (a recipe recorded on a larger machine) runs with the CPUs
    there are, with a warning: oversubscribed it ran 8× slower, and torch's thread pool crashed at
    100 000 threads. Results may then differ from the recorded run's in the last bits."""
    previous = torch.get_num_threads()
    cpus = os.cpu_count()
    if threads and cpus and threads > cpus:
        log.warning("recipe threads: %d is more than this machine's %d CPUs; running with %d (results may "
                    "differ from the recorded run's in the last bits)", threads, cpus, cpus)
        threads = cpus
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_recipe(recipe: Recipe, *, out: str | Path | None = None, overwrite: bool = True, show_progress: bool = True,
               base: Base | None = None) -> PruneResult:
    """Score → allocate → prune → fine-tune → evaluate; save state dict + plan when ``out`` is given."""
    t0 = time.perf_counter()
    recipe.sized()  # a search's base recipe has no allocation: an error before any work
    base = base or prepare(recipe, show_progress=show_progress)
    t1 = time.perf_counter()
    table = None if recipe.plan is not None else score_table(base, recipe_criteria(recipe), show_progress=show_progress,
                                                             blended=recipe.criterion.criteria)
    plan = build_plan(recipe, base, table)
    if plan.kept and all(len(idx) == plan.channels[n] for n, idx in plan.kept.items()):
        a = recipe.allocation  # e.g. a min_keep above every group's width: 100% of the MACs, without a word
        rule = f" (min_keep {a.rule.min_keep}, max_ratio {a.rule.max_ratio:g})" if a is not None else ""
        log.warning("the plan removes no channel%s; every group stays dense: check the allocation", rule)
    t2 = time.perf_counter()
    with torch_threads(recipe.threads):  # a search trial's thread count: the same arithmetic, the same result
        model, history, plan = train_pruned(recipe, base, plan, show_progress=show_progress)
        t3 = time.perf_counter()
        cost = check_pruned_macs(model, base.input_shape, plan, macs_budget=recipe.sized().macs_budget,
                                 dense_macs=int(base.dense["macs"]))
        # the plan saved with the model records what was counted: a carried plan's figures (edited,
        # or of another shape) are not copied forward, and a pruned file's check on loading holds
        plan = dataclasses.replace(plan, pruned=cost, dense=Cost(int(base.dense["macs"]), int(base.dense["params"])))
        pruned = {"macs": cost.macs, "params": cost.params,
                  "accuracy": evaluate(model, base.loader("test"), device=base.device)}
    timings = {**base.timings, "prepare_s": t1 - t0, "score_plan_s": t2 - t1, "finetune_s": t3 - t2,
               "total_s": time.perf_counter() - t0}
    model.eval()  # as evaluated and as load_pruned gives it: a call on it must not move its BN statistics
    result = PruneResult(base.dense, pruned, plan, history, model, table.all_cached if table else None, timings)
    if out is not None:
        spec = recipe.model
        try:  # checked before the work, but a file may have appeared there since (another run, same --out)
            # the pair appears together: the plan first, the model last; Ctrl-C leaves neither half
            result.out, result.plan_path = save_pruned_with_plan(
                out, model, plan, {"name": spec.name, "num_classes": spec.num_classes,
                                   "in_channels": spec.in_channels, "kwargs": dict(spec.kwargs)}, overwrite=overwrite)
        except FileExistsError as exc:
            raise ConfigError(f"{exc.filename or str(out)!r} appeared while pruning (another run with the same "
                              "--out?) and was not replaced, so this result is not saved; run again with another "
                              "--out, or --overwrite") from None
    return result
