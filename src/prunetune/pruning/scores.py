"""ScoreTable: ``{criterion: {group: Tensor[C]}}``, computed once and cached on disk by fingerprint.

Each criterion's scores are cached in a file of their own, keyed by a fingerprint of everything
they depend on: the model weights, the calibration images and labels (activation criteria only),
the criterion's parameters, the calibration settings and the package version. Asking for a table
loads what is cached and computes the rest, all missing activation criteria in one calibration pass.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunetune._atomic import torch_save_atomic
from prunetune._plugins import source_digest, user_modules
from prunetune._precision import PRECISION
from prunetune.exceptions import ConfigError
from prunetune.pruning.calibration import calibrate
from prunetune.pruning.criteria import WEIGHT, get_criterion
from prunetune.pruning.groups import Group, ModelGroups
from prunetune.version import __version__

CACHE_ENV = "PRUNETUNE_CACHE_DIR"


def default_cache_dir() -> Path:
    """The cache root: ``$PRUNETUNE_CACHE_DIR``, else ``~/.cache/prunetune``. Scores live in ``scores/``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "prunetune"


@dataclass
class ScoreTable:
    """Scores per criterion and group, with extras (e.g. CMI curves) and provenance.

    Attributes:
        scores: criterion -> group -> ``Tensor[C]`` (float64, CPU), higher = keep.
        extras: criterion -> group -> name -> tensor.
        fingerprints: criterion -> the fingerprint its scores were computed under.
        cached: criterion -> whether it was loaded from the cache (True) or computed (False).
    """

    scores: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    extras: dict[str, dict[str, dict[str, Tensor]]] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """One fingerprint for the whole table (order-independent)."""
        text = json.dumps(sorted(self.fingerprints.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def all_cached(self) -> bool:
        return bool(self.cached) and all(self.cached.values())

    def __getitem__(self, criterion: str) -> dict[str, Tensor]:
        if criterion not in self.scores:
            raise ConfigError(f"criterion {criterion!r} was not scored; scored: {sorted(self.scores)}")
        return self.scores[criterion]


@dataclass(frozen=True)
class CalibrationSettings:
    """What the activation statistics depend on besides the model and the images."""

    activation: str = "relu"
    batch_size: int = 128
    point: str = "block_output"

    def key(self) -> dict[str, Any]:
        return {"activation": self.activation, "point": self.point}


def tensor_digest(tensors: Iterable[tuple[str, Tensor]]) -> str:
    """sha256 over names, shapes, dtypes and bytes of tensors (order as given)."""
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def model_digest(model: nn.Module) -> str:
    """Fingerprint of a model's parameters and buffers (its weights, BN statistics)."""
    return tensor_digest(sorted(model.state_dict().items()))


def weight_scores(model: nn.Module, groups: ModelGroups, name: str,
                  params: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
    """Score every group with a weight criterion: the mean over the group's out-layers (or BNs).
    ``params`` are merged into the criterion's defaults and checked, as a recipe's are (``{}`` or None:
    the defaults)."""
    crit = get_criterion(name)
    params = crit.resolve(dict(params or {}))
    modules = dict(model.named_modules())
    _check_groups_of(model, groups, modules)
    if crit.weight_source(params) == "group":
        return group_weight_scores(model, groups)
    out = {}
    for g in groups:
        sources = _weight_sources(g, crit.weight_source(params), modules)
        values = [_weight_score(crit, name, modules[s].weight.detach(), params, s) for s in sources]
        out[g.name] = torch.stack(values).mean(0)
        if out[g.name].shape != (g.channels,):
            raise ConfigError(f"group {g.name!r} has {g.channels} channels, but this model's layer {sources[0]!r} "
                              f"has {out[g.name].shape[0]}: {_OTHER_MODEL}")
    return out


_OTHER_MODEL = "the groups were found on another model; pass find_groups(model, input_shape) of this one"


def _weight_score(crit: Any, name: str, weight: Tensor, params: Mapping[str, Any], layer: str) -> Tensor:
    """``crit.from_weight`` as a float64 CPU ``Tensor[C]``; what else a (plugin) criterion returns is a
    one-line error naming it (a list or a numpy array was an AttributeError deep in the scoring)."""
    out = crit.from_weight(weight, **params)
    if not isinstance(out, Tensor) or out.is_complex() or out.dim() != 1 or out.shape[0] != weight.shape[0]:
        got = (f"a {type(out).__name__}" if not isinstance(out, Tensor)
               else f"a {out.dtype} tensor of shape {tuple(out.shape)}")
        raise ConfigError(f"criterion {name!r} returned {got} for layer {layer!r}; a criterion's from_weight returns "
                          f"one real score per output channel, a Tensor[{weight.shape[0]}]")
    return out.to("cpu", torch.float64)


def _check_groups_of(model: nn.Module, groups: ModelGroups, modules: Mapping[str, nn.Module]) -> None:
    """Refuse ``groups`` that name a layer ``model`` has not (groups found on another model)."""
    for g in groups:
        for layer in (*g.out_layers, *g.in_layers, *g.norms):
            if layer not in modules:
                raise ConfigError(f"group {g.name!r} names layer {layer!r}, which {type(model).__name__} has not: "
                                  f"{_OTHER_MODEL}")


def group_weight_scores(model: nn.Module, groups: ModelGroups) -> dict[str, Tensor]:
    """``group_l2`` of every group: Torch-Pruning's dependency graph of ``model`` gives each group's
    coupled layers and where the group's channels sit in them."""
    from prunetune.pruning import tp_bridge
    from prunetune.pruning.criteria.group_magnitude import group_energy

    graph = tp_bridge.build_graph(model, tp_bridge.example_for(model, groups.input_shape))
    names = {m: n for n, m in model.named_modules()}
    by_root: dict[str, list] = {}
    for members in tp_bridge.raw_groups(graph, tp_bridge.output_layers(graph)):
        for module, role, _, _ in members:
            if role == "out" and module in names:
                by_root.setdefault(names[module], members)
    missing = [g.name for g in groups if g.out_layers[0] not in by_root]
    if missing:  # the groups come from this same graph (find_groups): a mismatch is a bug, not a user error
        raise RuntimeError(f"group_l2: the dependency graph has no coupled layers for group {missing[0]!r}")
    return {g.name: group_energy(by_root[g.out_layers[0]], g.channels) for g in groups}


def _weight_sources(group: Group, source: str, modules: Mapping[str, nn.Module]) -> tuple[str, ...]:
    """The group's BNs with a γ (``source="bn"``; ``affine=False`` has none), else its out-layers."""
    norms = tuple(n for n in group.norms if getattr(modules[n], "weight", None) is not None)
    if source == "bn" and norms:
        return norms
    return group.out_layers


def compute_scores(
    model: nn.Module,
    groups: ModelGroups,
    criteria: Mapping[str, Mapping[str, Any] | None],
    *,
    calibration: Callable[[], Iterable[tuple[Tensor, Tensor]]] | None = None,
    calibration_digest: str | None = None,
    settings: CalibrationSettings = CalibrationSettings(),
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    device: str | torch.device = "cpu",
    show_progress: bool = True,
    extras_only: Collection[str] = (),
) -> ScoreTable:
    """Score ``model``'s groups with every criterion in ``criteria`` (name -> parameters).

    Args:
        calibration: returns the calibration batches ``(images, labels)``; needed for activation
            criteria. ``calibration_digest`` fingerprints those images and labels.
        cache_dir: where cached scores live (default :func:`default_cache_dir`); ``use_cache=False``
            neither reads nor writes it.
        extras_only: criteria whose scores the caller does not use, only their extras (``cmi`` read
            by the ``cmi_knee`` cut-off alone): for these, where the request has no cache entry of its
            own, a :meth:`~prunetune.pruning.criteria.base.Criterion.stand_ins` entry answers it (its
            extras give the same answer; its scores may differ, so never for a blended criterion).
    """
    resolved = {name: get_criterion(name).resolve(p) for name, p in criteria.items()}
    mdigest = model_digest(model)
    cache = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "scores"
    table = ScoreTable()
    todo: dict[str, dict[str, Any]] = {}
    scan = functools.cache(user_modules)  # sys.modules walked once for all the plugin criteria
    codes = {name: plugin_code_digest(get_criterion(name), scan) for name in resolved}  # source files read once
    for name, params in resolved.items():
        needs = get_criterion(name).needs(params)
        uses_data = WEIGHT not in needs
        code = codes[name]
        cached = use_cache and code is not None  # a plugin whose source cannot be read is computed afresh
        if uses_data and (calibration is None or calibration_digest is None):
            raise ConfigError(f"criterion {name!r} needs calibration images; set 'calibration' in the recipe")
        key = settings.key() if uses_data else None
        if uses_data and get_criterion(name).batch_dependent(params):
            key = {**key, "batch_size": settings.batch_size}
        if code:
            key = {**(key or {}), "plugin_code": code}
        fp = _fingerprint(name, params, mdigest, calibration_digest if uses_data else None, key, groups)
        table.fingerprints[name] = fp
        if cached and _load(cache, fp, table, name, groups):
            continue
        if cached and name in extras_only and _load_stand_in(
                cache, name, params, mdigest, calibration_digest if uses_data else None, key, groups, table):
            continue
        table.cached[name] = False
        if uses_data:
            todo[name] = params
        else:
            table.scores[name] = weight_scores(model, groups, name, params)
            table.extras[name] = {}
    if todo:
        results = calibrate(model, groups, todo, calibration(), activation=settings.activation,
                            point=settings.point, device=device, show_progress=show_progress)
        for name, per_group in results.items():
            table.scores[name] = {g: s for g, (s, _) in per_group.items()}
            table.extras[name] = {g: e for g, (_, e) in per_group.items()}
    for name in resolved:
        _check_scores(name, table.scores[name], groups)
        if use_cache and not table.cached[name] and codes[name] is not None:
            _save(cache, table.fingerprints[name], table, name)
    return table


def plugin_code_digest(criterion: Any, modules_of_user: Callable[[], list[str]] = user_modules) -> str | None:
    """The digest of a plugin criterion's source: its scores are cached under it, since the package
    version (in every fingerprint) says nothing of code outside the package, and an edited formula
    read the old scores back. It covers the modules the criterion comes from and every other loaded
    module of the user's own code (:func:`prunetune._plugins.user_modules`: outside the standard
    library, the installed packages and prunetune), since the formula may call into any of them (a
    helper module). ``""`` for a criterion built from prunetune's own code alone; None where a module
    it comes from has no readable source (defined in a notebook or ``python -c``): not cached.
    ``modules_of_user``: what lists those modules (a caller digesting several criteria passes one
    that walks ``sys.modules`` once)."""
    objects = [criterion, *getattr(criterion, "__dict__", {}).values()]
    modules = {getattr(o, "__module__", None) or type(o).__module__ for o in objects if callable(o) or o is criterion}
    modules.add(type(criterion).__module__)
    outside = sorted(m for m in modules if m and m != "prunetune" and not m.startswith("prunetune."))
    digest = hashlib.sha256()
    for name in outside:
        try:
            digest.update(Path(inspect.getsourcefile(sys.modules[name]) or "").read_bytes())
        except (KeyError, TypeError, OSError):
            return None
    if outside:
        digest.update(source_digest(m for m in modules_of_user() if m not in outside).encode())
    return digest.hexdigest()[:16] if outside else ""


def _fingerprint(name, params, mdigest, cdigest, settings, groups: ModelGroups) -> str:
    key = {
        "criterion": name, "params": params, "model": mdigest, "calibration": cdigest,
        "settings": settings, "version": __version__, "precision": PRECISION,
        "input_shape": list(groups.input_shape),
        "groups": [[g.name, g.channels] for g in groups],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _load_stand_in(cache: Path, name: str, params, mdigest, cdigest, settings, groups: ModelGroups,
                   table: ScoreTable) -> bool:
    """Load a cached entry of one of the criterion's :meth:`~prunetune.pruning.criteria.base.Criterion.stand_ins`
    for ``params``; the table then records that entry's fingerprint (what was read)."""
    for other in get_criterion(name).stand_ins(params):
        fp = _fingerprint(name, other, mdigest, cdigest, settings, groups)
        if _load(cache, fp, table, name, groups):
            table.fingerprints[name] = fp
            return True
    return False


def _path(cache: Path, fp: str) -> Path:
    return cache / f"{fp}.pt"


def _load(cache: Path, fp: str, table: ScoreTable, name: str, groups: ModelGroups) -> bool:
    path = _path(cache, fp)
    if not path.is_file():
        return False
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # a torn or foreign file: recompute and overwrite it
        return False
    if not isinstance(data, Mapping) or not isinstance(data.get("scores"), Mapping) \
            or not isinstance(data.get("extras", {}), Mapping) or _scores_problem(data["scores"], groups) is not None:
        return False  # a damaged entry, the same
    table.scores[name] = data["scores"]
    table.extras[name] = data.get("extras", {})
    table.cached[name] = True
    return True


def _save(cache: Path, fp: str, table: ScoreTable, name: str) -> None:
    torch_save_atomic({"scores": table.scores[name], "extras": table.extras[name]}, _path(cache, fp))


def _check_scores(name: str, scores: Mapping[str, Tensor], groups: ModelGroups) -> None:
    problem = _scores_problem(scores, groups)
    if problem is not None:
        raise ConfigError(f"criterion {name!r} gave {problem}")


def _scores_problem(scores: Mapping[str, Tensor], groups: ModelGroups) -> str | None:
    """What is wrong with ``scores`` for ``groups`` (None: one finite score per channel of every group)."""
    for g in groups:
        s = scores.get(g.name)
        if not isinstance(s, Tensor) or s.numel() != g.channels:
            return f"no or wrong-sized scores for group {g.name!r}"
        if not torch.isfinite(s).all():
            return f"non-finite scores for group {g.name!r}"
    return None
