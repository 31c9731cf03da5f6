"""The score cache and a plugin criterion's code: the package version in every fingerprint says nothing
of code outside the package, so an edited plugin formula read its old scores back."""

from __future__ import annotations

import importlib
import sys

from prunetune.pruning.criteria import get_criterion
from prunetune.pruning.scores import plugin_code_digest

PLUGIN = '''
from dataclasses import dataclass
from prunetune.pruning.criteria import WEIGHT, Criterion

@dataclass(frozen=True)
class MyCrit(Criterion):
    def needs(self, params):
        return frozenset({WEIGHT})

    def from_weight(self, weight, **params):
        return {sign}weight.detach().reshape(weight.shape[0], -1).abs().sum(1).double()

CRIT = MyCrit("my_l1_for_the_cache_test")
'''


def test_a_plugin_criterions_cache_key_follows_its_source(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "my_cache_plugin.py"
    path.write_text(PLUGIN.replace("{sign}", ""))
    module = importlib.import_module("my_cache_plugin")
    try:
        first = plugin_code_digest(module.CRIT)
        path.write_text(PLUGIN.replace("{sign}", "-"))  # the developer edits the formula
        assert first and plugin_code_digest(module.CRIT) != first
    finally:
        sys.modules.pop("my_cache_plugin", None)
    assert plugin_code_digest(get_criterion("l1")) == ""  # prunetune's own: the package version covers it


def test_a_plugin_criterions_cache_key_follows_the_helper_modules_it_calls(tmp_path, monkeypatch) -> None:
    """Only the module defining the criterion was hashed: an edited helper module it calls (another
    file of the user's) read the old scores back."""
    monkeypatch.syspath_prepend(str(tmp_path))
    helper = tmp_path / "my_cache_helper.py"
    helper.write_text("def norm(w):\n    return w.abs().sum(1)\n")
    (tmp_path / "my_helped_plugin.py").write_text(
        PLUGIN.replace("{sign}weight.detach().reshape(weight.shape[0], -1).abs().sum(1).double()",
                       "my_cache_helper.norm(weight.detach().reshape(weight.shape[0], -1)).double()")
        .replace("from dataclasses import dataclass", "from dataclasses import dataclass\nimport my_cache_helper"))
    module = importlib.import_module("my_helped_plugin")
    try:
        first = plugin_code_digest(module.CRIT)
        assert first == plugin_code_digest(module.CRIT)  # stable while nothing changes
        helper.write_text("def norm(w):\n    return -w.pow(2).sum(1)\n")  # the helper's formula is edited
        assert plugin_code_digest(module.CRIT) != first
        # score_table hands one cached lister to all its plugin criteria: sys.modules is walked once
        from prunetune._plugins import user_modules

        calls = []
        listed = plugin_code_digest(module.CRIT, lambda: calls.append(1) or user_modules())
        assert calls == [1] and listed == plugin_code_digest(module.CRIT)
    finally:
        sys.modules.pop("my_helped_plugin", None)
        sys.modules.pop("my_cache_helper", None)


def test_a_plugin_without_readable_source_is_not_cached(monkeypatch) -> None:
    import types

    module = types.ModuleType("made_in_a_notebook")
    exec(PLUGIN.replace("{sign}", ""), module.__dict__)  # noqa: S102 - a module with no file, as in a notebook
    module.MyCrit.__module__ = "made_in_a_notebook"
    monkeypatch.setitem(sys.modules, "made_in_a_notebook", module)
    assert plugin_code_digest(module.CRIT) is None


def test_weight_scores_takes_the_criterions_defaults_and_refuses_unknown_parameters() -> None:
    """The README's core snippet path: 'random' raised KeyError('seed') with {}, and unknown
    parameters were accepted silently by l1, l2, bn_scale and group_l2."""
    import pytest

    from prunetune.exceptions import ConfigError
    from prunetune.models import create_model
    from prunetune.pruning import find_groups
    from prunetune.pruning.scores import weight_scores

    model = create_model("tiny_resnet", in_channels=1)
    groups = find_groups(model, (1, 8, 8))
    assert set(weight_scores(model, groups, "random", {})) == set(groups.names)
    assert set(weight_scores(model, groups, "l1")) == set(groups.names)
    with pytest.raises(ConfigError, match="criterion 'l1' has no parameter 'bogus'"):
        weight_scores(model, groups, "l1", {"bogus": 1})


def test_a_criterion_returning_something_else_than_one_score_per_channel_is_named() -> None:
    from dataclasses import dataclass

    import pytest
    import torch

    from prunetune.exceptions import ConfigError
    from prunetune.models import create_model
    from prunetune.pruning import find_groups
    from prunetune.pruning.criteria import CRITERIA, WEIGHT, Criterion
    from prunetune.pruning.scores import weight_scores

    @dataclass(frozen=True)
    class Odd(Criterion):
        kind: str = "list"

        def needs(self, params):
            return frozenset({WEIGHT})

        def from_weight(self, weight, **params):
            norms = weight.reshape(weight.shape[0], -1).abs().sum(1)
            return norms.tolist() if self.kind == "list" else norms[:, None]

    model = create_model("tiny_resnet", in_channels=1)
    groups = find_groups(model, (1, 8, 8))
    for kind, got in (("list", "a list"), ("column", r"a torch\.float32 tensor of shape \(\d+, 1\)")):
        CRITERIA._items["odd_for_the_test"] = Odd("odd_for_the_test", kind=kind)
        try:
            with pytest.raises(ConfigError, match=rf"^criterion 'odd_for_the_test' returned {got} for layer "):
                weight_scores(model, groups, "odd_for_the_test", {})
        finally:
            CRITERIA._items.pop("odd_for_the_test", None)
    assert torch.is_tensor(weight_scores(model, groups, "l1")[groups.names[0]])
