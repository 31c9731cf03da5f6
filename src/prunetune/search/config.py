"""The search config: one YAML file, validated strictly; command-line flags override its values.

Schema (unknown keys are errors that name the key)::

    recipe: base.yaml          # the base recipe: a path (relative to this file) or an inline mapping,
                               # the schema of prunetune.recipes.schema.Recipe (model, data, calibration,
                               # finetune, pretrain, seed, device); criterion may be left out (the
                               # space's blend), and allocation too: every trial sizes its own plan
                               # under macs_budget (given, the search keeps its keep rule: min_keep,
                               # round_to, max_ratio); no plan
    space: {...}               # what is sampled: see prunetune.spaces.spec
    screen: true               # screen 16 × trials candidate plans by an adaptive-BN proxy and
                               # fine-tune only the best (false: sample every trial directly), or
                               # {candidates: N, bn_batches: 4, val_images: 2048, train_params: recipe
                               # (screened trials use the recipe's lr and the space's first schedule)
                               # | sampled (the fine-tune study samples them)}; see
                               # prunetune.search.screening
    macs_budget: 0.5           # required here or as --macs-budget (flops_budget is a synonym)
    trials: 32                 # trials in all
    concurrency: 2             # trials at a time
    sampler: tpe               # tpe (multivariate TPE) | nsga2
    seed: 0                    # sampler seed
    cpus_per_trial: 1
    gpus_per_trial: 0          # fractions allowed, e.g. 0.5
    time_budget_s: null        # stop starting/running trials after this many seconds
    asha: false                # true, or {grace_period: 1, reduction_factor: 2}: early stopping on
                               # validation accuracy over fine-tune epochs
    reuse_actors: true
    latency: false             # true: each trial also logs latency_ms, the pruned network's median
                               # batch-1 latency (BN folded) on the trial's own CPU threads
    experiment: null           # default: this file's name without suffix
    tracking_uri: null         # default sqlite:///<cwd>/mlflow.db
    storage_path: null         # default <cwd>/prunetune-runs (Ray's results; resume state)
    study_storage: null        # the fine-tune Optuna study (an RDB URL or an sqlite file); default
                               # sqlite:///<MLflow db dir>/<db stem>-optuna.db beside an sqlite MLflow
                               # store, else <storage_path>/optuna.db; optuna-dashboard opens it
    ray_address: null          # an existing Ray cluster: auto, host:port or ray://host:10001
    allow_code: false          # let a package.module:function model name import and run that code
                               # (honoured here, in your own config, or as --allow-code; never from
                               # a recipe file)
    plugins: []                # modules that register criteria, normalisers, schedules, strategies,
                               # ratio presets, models or datasets, e.g. [mypkg.criteria]: imported
                               # here and in every Ray worker (needs allow_code; importable: installed
                               # or on PYTHONPATH)

Paths in the file are relative to the file; paths given on the command line and the defaults are
relative to the working directory. All are made absolute (Ray trials run in their own directories).
"""

from __future__ import annotations

import dataclasses
import os
import re
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from prunetune._checks import unknown_key
from prunetune._plugins import load_plugins, plugin_files_digest, plugin_names
from prunetune._spelling import FLAGS, Spelling
from prunetune._safety import OPT_IN, check_user_code, is_user_code
from prunetune._numbers import is_finite_number
from prunetune._text import short
from prunetune._text import masked_url
from prunetune.exceptions import ConfigError, UntrustedCodeError
from prunetune.pruning.allocation import MacsBudget, check_budget
from prunetune.recipes.schema import Recipe, read_yaml
from prunetune.search.config_checks import (check_criterion_params, check_device, check_train_params,
                                            warn_unsearched)
from prunetune.search.screening import ScreenSpec
from prunetune.search.study import default_study_storage, resolve_study_storage
from prunetune.spaces import SpaceSpec
from prunetune.tracking.store import resolve_tracking_uri

log = logging.getLogger("prunetune")

SAMPLERS = ("tpe", "nsga2")
MAX_SEED = 2**32 - 2
SETTINGS_KEYS = ("macs_budget", "trials", "concurrency", "sampler", "seed", "cpus_per_trial", "gpus_per_trial",
                 "time_budget_s", "asha", "reuse_actors", "latency", "experiment", "tracking_uri", "storage_path",
                 "ray_address", "allow_code", "study_storage", "plugins")
URL_SETTINGS = ("study_storage", "tracking_uri")  # may hold a password: masked wherever written down
TOP_KEYS = {"recipe", "space", "screen", "flops_budget", *SETTINGS_KEYS}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_NAME = 128


@dataclass(frozen=True)
class AshaSpec:
    """ASHA early stopping on validation accuracy, one rung per fine-tune epoch."""

    grace_period: int = 1
    reduction_factor: int = 2

    def __post_init__(self) -> None:
        if not _int(self.grace_period) or self.grace_period < 1:
            raise ConfigError(f"asha.grace_period must be an integer >= 1, got {short(self.grace_period)}")
        if not _int(self.reduction_factor) or self.reduction_factor < 2:
            raise ConfigError(f"asha.reduction_factor must be an integer >= 2, got {short(self.reduction_factor)}")


@dataclass(frozen=True)
class SearchSettings:
    """How the search runs (all paths absolute)."""

    macs_budget: float
    experiment: str
    tracking_uri: str
    storage_path: str
    trials: int = 32
    concurrency: int = 2
    sampler: str = "tpe"
    seed: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    time_budget_s: float | None = None
    asha: AshaSpec | None = None
    reuse_actors: bool = True
    ray_address: str | None = None
    allow_code: bool = False
    latency: bool = False
    study_storage: str | None = None
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_budget(self.macs_budget)
        for key in ("trials", "concurrency"):
            if not _int(getattr(self, key)) or getattr(self, key) < 1:
                raise ConfigError(f"{key} must be an integer >= 1, got {short(getattr(self, key))}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {short(self.sampler)}")
        if not _int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            # Optuna's samplers seed numpy, which takes 0 .. 2**32 - 1 (and a screened search uses seed + 1)
            raise ConfigError(f"seed must be an integer in [0, {MAX_SEED}], got {short(self.seed)}")
        if not is_finite_number(self.cpus_per_trial) or self.cpus_per_trial <= 0:
            raise ConfigError(f"cpus_per_trial must be a number > 0, got {short(self.cpus_per_trial)}")
        if not is_finite_number(self.gpus_per_trial) or self.gpus_per_trial < 0:
            raise ConfigError(f"gpus_per_trial must be a number >= 0 (fractions share a GPU), got {short(self.gpus_per_trial)}")
        if self.time_budget_s is not None and (not is_finite_number(self.time_budget_s) or self.time_budget_s <= 0):
            raise ConfigError(f"time_budget_s must be a number of seconds > 0, got {short(self.time_budget_s)}")
        if not isinstance(self.experiment, str) or not NAME.match(self.experiment):
            raise ConfigError(f"experiment must be a name of letters, digits, '_', '.', '-', got {short(self.experiment)}")
        if len(self.experiment) > MAX_NAME:  # it names a folder: file systems stop at 255 bytes
            raise ConfigError(f"experiment must be a name of at most {MAX_NAME} characters, got one of "
                              f"{len(self.experiment)} ({short(self.experiment)})")
        if self.ray_address is not None:
            ray_address_parts(self.ray_address)
        if not isinstance(self.allow_code, bool):
            raise ConfigError(f"allow_code must be true or false, got {short(self.allow_code)}")
        if not isinstance(self.reuse_actors, bool):
            raise ConfigError(f"reuse_actors must be true or false, got {short(self.reuse_actors)}")
        if not isinstance(self.latency, bool):
            raise ConfigError(f"latency must be true or false, got {short(self.latency)}")
        if plugin_names(self.plugins) != self.plugins:
            raise ConfigError(f"plugins must be a tuple of distinct module names, got {short(self.plugins)}")
        if self.plugins and not self.allow_code:  # the workers import them: never without the opt-in
            raise UntrustedCodeError(f"plugins {', '.join(map(repr, self.plugins))} would import and run Python "
                                     f"code; if you trust it, {OPT_IN}")

    @property
    def budget(self) -> MacsBudget:
        """The search's MACs budget (validated in ``__post_init__``)."""
        return MacsBudget(self.macs_budget)

    @property
    def experiment_dir(self) -> Path:
        return Path(self.storage_path) / self.experiment

    @property
    def study_url(self) -> str:
        """Where the fine-tune Optuna study lives (``study_storage``, or its default beside the MLflow store)."""
        return self.study_storage or default_study_storage(self.tracking_uri, self.storage_path)


RAY_CLIENT_PORT = 10001  # Ray Client's port when a ray:// address leaves it out


def ray_address_parts(address: Any, *, what: str = "ray_address") -> tuple[str, int] | None:
    """Check a Ray address; the ``(host, port)`` a connection must reach, None for ``auto``/``local``.

    Accepted: ``auto`` (the cluster ``ray start`` left on this machine), ``local`` (a new local
    Ray), ``host:port`` (a cluster's GCS, as ``ray start --head`` prints it; an IPv6 host in
    brackets, ``[::1]:6379``) and ``ray://host[:port]`` (Ray Client, port 10001 if left out).
    Anything else is a :class:`ConfigError` naming ``what`` and the value.
    """
    if address in ("auto", "local"):
        return None
    bad = ConfigError(f"{what} must be 'auto', 'local', host:port or ray://host:port (as `ray start --head` "
                      f"prints it; an IPv6 host in brackets, [::1]:6379), got {short(address)}")
    if not isinstance(address, str) or not address or any(ch.isspace() for ch in address):
        raise bad
    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    if rest.startswith("["):  # [IPv6]:port
        host, close, tail = rest[1:].partition("]")
        if not close or not host or (tail and not tail.startswith(":")):
            raise bad
        port = tail[1:] if tail else ""
    else:
        host, sep, port = rest.rpartition(":")
        if not sep:
            host, port = rest, ""
        if ":" in host:  # an IPv6 host without brackets
            raise bad
    if not port and client:
        port = str(RAY_CLIENT_PORT)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise bad
    return host, int(port)


@dataclass(frozen=True)
class SearchConfig:
    """A validated search: base recipe, space, settings."""

    recipe: Recipe
    space: SpaceSpec
    settings: SearchSettings
    source: str | None = field(default=None, compare=False)
    screen: ScreenSpec = ScreenSpec()

    def to_dict(self) -> dict[str, Any]:
        settings = dataclasses.asdict(self.settings)
        settings["plugins"] = list(settings["plugins"])  # YAML and JSON lists
        return {"recipe": self.recipe.to_dict(), "space": self.space.to_dict(), "screen": self.screen.to_value(),
                **settings}

    def identity(self) -> dict[str, Any]:
        """What a resumed search must share with the interrupted one (the base recipe as given;
        :func:`prunetune.search.resume.state_identity` for the form older state files recorded)."""
        d = self.public_dict()
        keep = ("recipe", "space", "screen", "macs_budget", "trials", "sampler", "seed", "asha", "tracking_uri",
                "study_storage")
        # plugin modules only where there are some: a search without keeps the identity it had before them
        # (and may be resumed with some added); their order does not change what they register, their
        # code does (a resume would screen with the old code's pool and fine-tune with the new)
        plugins = {"plugins": sorted(d["plugins"]), "plugins_code": plugin_files_digest(d["plugins"])}
        return {k: d[k] for k in keep} | (plugins if d["plugins"] else {})

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` as it may be written down (state file, MLflow artifact): a password in the
        study storage's or the tracking store's URL shown as ``***``."""
        d = self.to_dict()
        for key in URL_SETTINGS:
            if isinstance(d.get(key), str):
                d[key] = masked_url(d[key])
        return d

    def to_yaml(self) -> str:
        """The config as YAML, as recorded with the search (:meth:`public_dict`: no password)."""
        return yaml.safe_dump(self.public_dict(), sort_keys=False)


def load_search_config(path: str | os.PathLike | None, overrides: Mapping[str, Any] | None = None, *,
                       cwd: str | os.PathLike | None = None, spelling: Spelling = FLAGS) -> SearchConfig:
    """Read a search config file (or none: everything from ``overrides``) and apply ``overrides``."""
    data: Any = {}
    if path is not None:
        data = read_yaml(path, "search config") or {}
    return parse_search_config(data, source=str(Path(path).resolve()) if path else None,
                               overrides=overrides, cwd=cwd, spelling=spelling)


def parse_search_config(data: Any, *, source: str | None = None, overrides: Mapping[str, Any] | None = None,
                        cwd: str | os.PathLike | None = None, spelling: Spelling = FLAGS) -> SearchConfig:
    """Validate a search config mapping; ``overrides`` (CLI flags, None = not given) win.

    ``spelling``: how errors name what the caller can pass beside the config: a command's flags
    (``--macs-budget 0.5``, ``--plugin``) or the API's keywords (``macs_budget=0.5``, ``plugins``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a search config must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - TOP_KEYS, key=str)
    if unknown:
        raise unknown_key(unknown[0], "the search config", TOP_KEYS)
    cwd = Path(cwd) if cwd is not None else Path.cwd()
    here = Path(source).parent if source else cwd
    d = dict(data)
    if "flops_budget" in d:  # the papers' "FLOPs" are MACs
        if "macs_budget" in d:
            raise ConfigError("give one of macs_budget or flops_budget (a synonym) in the search config")
        d["macs_budget"] = d.pop("flops_budget")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(SETTINGS_KEYS), key=str)
    if unknown:
        raise ConfigError(f"unknown search setting {short(unknown[0])}; known: {', '.join(SETTINGS_KEYS)}")
    if "macs_budget" not in d and "macs_budget" not in given:
        raise ConfigError(f"the search needs a MACs budget: pass {spelling.given('macs_budget', 0.5)} or set "
                          "macs_budget in the config")
    # plugin modules register their entries before the space and the recipe name them
    plugins_from = "the search config's plugins"
    if "plugins" in given:  # named as the caller typed them
        plugins_from = "plugins" if spelling.keywords else "--plugin"
    advice = OPT_IN
    if given.get("allow_code") is False and d.get("allow_code") is True:  # the caller's False wins over the config
        advice = (f"drop {spelling.given('allow_code', False)}, which overrides the config's allow_code: true, "
                  f"or pass {spelling.switch('allow_code')}")
    plugins = load_plugins(given.get("plugins", d.get("plugins")),
                           allow_code=given.get("allow_code", d.get("allow_code", False)), what=plugins_from,
                           advice=advice)
    space = SpaceSpec.parse(d.get("space"))
    screen = ScreenSpec.parse(d.get("screen"))
    settings = _settings({**d, "plugins": plugins}, {k: v for k, v in given.items() if k != "plugins"}, source, here,
                         cwd)
    recipe = _base_recipe(d.get("recipe"), space, source, here, settings.allow_code, spelling)
    if advice is not OPT_IN and is_user_code(recipe.model.name):  # refused by the caller's False: say so now
        check_user_code(recipe.model.name, allow_code=False, advice=advice)
    check_train_params(recipe, space, screen)
    check_criterion_params(recipe, space)
    check_device(recipe, settings.gpus_per_trial, spelling)
    return SearchConfig(recipe, space, settings, source, screen)


def _settings(d: dict[str, Any], given: dict[str, Any], source: str | None, here: Path, cwd: Path) -> SearchSettings:
    values = {k: d[k] for k in SETTINGS_KEYS if k in d}
    paths = ("tracking_uri", "storage_path", "study_storage")
    for key in paths:  # file values relative to the file
        if values.get(key) is not None and key not in given:
            values[key] = _absolute(values[key], here, key)
    values.update({k: _absolute(v, cwd, k) if k in paths else v for k, v in given.items()})
    values.setdefault("experiment", Path(source).stem if source else "prunetune-search")
    values["tracking_uri"] = resolve_tracking_uri(values.get("tracking_uri"), cwd=cwd)
    values["storage_path"] = str(Path(values.get("storage_path") or cwd / "prunetune-runs").resolve())
    if values.get("study_storage") is None:
        values["study_storage"] = default_study_storage(values["tracking_uri"], values["storage_path"])
    asha = values.get("asha")
    if asha is True:
        values["asha"] = AshaSpec()
    elif asha is False or asha is None:
        values["asha"] = None
    elif isinstance(asha, Mapping):
        allowed = {f.name for f in fields(AshaSpec)}
        if set(asha) - allowed:
            raise unknown_key(sorted(set(asha) - allowed, key=str)[0], "asha", allowed)
        values["asha"] = AshaSpec(**asha)
    elif not isinstance(asha, AshaSpec):
        raise ConfigError(f"asha must be true, false or {{grace_period: 1, reduction_factor: 2}}, got {short(asha)}")
    return SearchSettings(**values)


def _absolute(value: Any, root: Path, key: str) -> str:
    if isinstance(value, os.PathLike):  # a Path from Python
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {short(value)}")
    if key == "tracking_uri":
        return resolve_tracking_uri(value, cwd=root)
    if key == "study_storage":
        return resolve_study_storage(value, cwd=root)
    return str((root / value).resolve())


def _base_recipe(value: Any, space: SpaceSpec, source: str | None, here: Path, allow_code: bool = False,
                 spelling: Spelling = FLAGS) -> Recipe:
    """The base recipe (``Recipe.from_dict(base=True)``: no plan, no allocation needed: every trial
    sizes its own under ``settings.budget``); a criterion left out is the space's blend."""
    if value is None:
        raise ConfigError("the search config needs a base 'recipe': a recipe file path or an inline mapping "
                          "(model, data, finetune, ...)")
    recipe_source = source
    if isinstance(value, str):
        path = here / value
        value = read_yaml(path, "base recipe (the search config's 'recipe')")
        recipe_source = str(path.resolve())
    if not isinstance(value, Mapping):
        raise ConfigError(f"the search config's 'recipe' must be a path or a mapping, got {short(value)}")
    data = dict(value)
    if "criterion" not in data:
        data["criterion"] = ({"blend": {c: 1.0 for c in space.criteria}, "normalizer": space.normalizers[0]}
                             if len(space.criteria) > 1 else space.criteria[0])
    if "allow_code" in data:
        raise ConfigError(f"allow_code belongs in the search config itself (or {spelling.switch('allow_code')}), not "
                          "in its base recipe: a recipe must not grant itself the right to run code")
    recipe = Recipe.from_dict(data, source=recipe_source, allow_code=allow_code, base=True)
    warn_unsearched(value, recipe, space)
    return absolute_paths(recipe)


def absolute_paths(recipe: Recipe) -> Recipe:
    """The recipe with its file paths (checkpoint, data root, cache dir) made absolute."""
    model = dataclasses.replace(recipe.model, checkpoint=_abs(recipe, recipe.model.checkpoint))
    data = dataclasses.replace(recipe.data, root=_abs(recipe, recipe.data.root))
    calibration = dataclasses.replace(recipe.calibration, cache_dir=_abs(recipe, recipe.calibration.cache_dir))
    return recipe.with_changes(model=model, data=data, calibration=calibration)


def _abs(recipe: Recipe, value: str | None) -> str | None:
    resolved = recipe.resolve_path(value)
    return None if resolved is None else str(Path(resolved).resolve())


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
