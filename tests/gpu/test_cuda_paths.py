"""On a CUDA device prunetune must find, remove and score what it does on the CPU (skipped without
CUDA; on a GPU machine: ``pytest -m gpu``).

A model moved to the GPU before :func:`find_groups` once lost its option-A residual streams: the
shortcut's pruner indexed the CUDA index buffers with a mask made on the CPU, the removal probe saw
that error and left ``conv1``, ``layer2.0.conv2`` and ``layer3.0.conv2`` of every CIFAR ResNet
unpruned. These tests hold the device paths to the CPU's answers.
"""

from __future__ import annotations

import copy

import pytest
import torch

from prunetune.models import create_model
from prunetune.pruning.criteria import CRITERIA, get_criterion
from prunetune.pruning.groups import find_groups
from prunetune.pruning.plan import make_plan
from prunetune.pruning.scores import CalibrationSettings, compute_scores
from prunetune.pruning.surgery import MaskHooks, apply_plan, channel_masks
from prunetune.recipes.pruned_file import load_pruned
from prunetune.testing.models import randomize_bn

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CUDA = torch.device("cuda")
MODELS = ["resnet20", "zoo_mobilenet", "zoo_densenet", "zoo_vgg", "zoo_shortcuts", "zoo_inception", "zoo_se"]


@pytest.mark.parametrize("name", MODELS)
def test_a_model_on_the_gpu_has_the_groups_of_its_cpu_copy(name: str) -> None:
    model = create_model(name, num_classes=10, in_channels=1).eval()
    on_cpu = find_groups(model, (1, 16, 16))
    on_gpu = find_groups(copy.deepcopy(model).to(CUDA), (1, 16, 16))
    assert on_gpu.skipped == on_cpu.skipped
    assert [(g.name, g.channels) for g in on_gpu] == [(g.name, g.channels) for g in on_cpu]


@pytest.mark.parametrize("name", ["resnet20", "zoo_mobilenet", "zoo_densenet"])
def test_removal_on_the_gpu_computes_what_masking_does(name: str) -> None:
    model = randomize_bn(create_model(name, num_classes=10, in_channels=1)).eval().double().to(CUDA)
    groups = find_groups(model, (1, 16, 16))
    gen = torch.Generator().manual_seed(0)
    plan = make_plan(groups, {g.name: torch.rand(g.channels, generator=gen) for g in groups},
                     {g.name: max(1, g.channels // 2) for g in groups})
    x = torch.randn(4, 1, 16, 16, generator=gen, dtype=torch.float64).to(CUDA)
    with torch.no_grad():
        with MaskHooks(model, groups, channel_masks(plan)):
            masked = model(x)
        pruned = apply_plan(copy.deepcopy(model), plan, groups)
        got = pruned(x)
    assert got.device.type == "cuda"
    assert float((got - masked).abs().max()) <= 1e-10 * float(masked.abs().max())
    if name == "resnet20":  # the residual streams are pruned too
        assert pruned.conv1.out_channels == len(plan.kept["conv1"]) < 16


def _scores(model, groups, batches, device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
    criteria = {name: get_criterion(name).resolve({"samples": 32} if name == "cmi" else {})
                for name in CRITERIA.names()}
    model = copy.deepcopy(model).to(device)
    on = [(x.to(device), y.to(device)) for x, y in batches]
    out = {}
    for suffix, chosen in (("", criteria), ("[source=feature]", {"capacity": {"source": "feature"},
                                                                 "independence": {"source": "feature"}})):
        table = compute_scores(model, groups, chosen, calibration=lambda: on, calibration_digest=f"cuda-{device}",
                               settings=CalibrationSettings(), use_cache=False, device=device, show_progress=False)
        out.update({name + suffix: per for name, per in table.scores.items()})
    return out


def test_every_criterion_ranks_on_the_gpu_as_on_the_cpu() -> None:
    """Scores differ by rounding only (1e-2 of a group's largest; TF32 is on by default and the
    calibration pass turns it off), and where a group's kept half differs, every channel that
    changed sides lies within twice that group's largest difference of the cut. The histogram of
    ``capacity[source=feature]`` is the exception: a channel that is constant up to rounding sits
    in one bin on one device and straddles an edge on the other (at most 1 bit apart, measured up
    to 4.6% of a group's largest score), so at most a tenth of its channels may differ by more."""
    model = randomize_bn(create_model("resnet20", num_classes=10, in_channels=1)).eval()
    groups = find_groups(model, (1, 16, 16))
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 1, 16, 16, generator=gen), torch.randint(0, 10, (32,), generator=gen))
               for _ in range(2)]
    cpu, gpu = _scores(model, groups, batches, torch.device("cpu")), _scores(model, groups, batches, CUDA)
    assert cpu.keys() == gpu.keys()
    for name, per in cpu.items():
        histogram = name == "capacity[source=feature]"
        far, channels = 0, 0
        for group, a in per.items():
            b = gpu[name][group]
            assert torch.isfinite(b).all(), (name, group)
            scale, diff = float(a.abs().max()), (a - b).abs()
            far, channels = far + int((diff > 1e-2 * scale).sum()), channels + len(a)
            assert float(diff.max()) <= (1.0 if histogram else 1e-2 * scale), (name, group)
            ordered = a.sort(descending=True, stable=True)
            k = (len(a) + 1) // 2
            if k == len(a):
                continue
            keep_a = set(ordered.indices[:k].tolist())
            keep_b = set(b.sort(descending=True, stable=True).indices[:k].tolist())
            cut = float(ordered.values[k - 1] + ordered.values[k]) / 2
            moved = torch.tensor(sorted(keep_a ^ keep_b), dtype=torch.long)
            assert bool(((a[moved] - cut).abs() <= 2 * float(diff.max())).all()), (name, group)
        if histogram:
            assert far <= channels // 10, (name, far, channels)


def test_a_recipe_runs_end_to_end_on_the_gpu(tmp_path) -> None:
    from prunetune import api

    recipe = {"model": {"name": "resnet20", "num_classes": 10, "in_channels": 1},
              "data": {"name": "digits", "image_size": 8}, "device": "cuda",
              "criterion": {"blend": {"chip": 0.5, "l1": 0.5}}, "allocation": {"macs_budget": 0.5},
              "schedule": {"name": "asfp"}, "pretrain": {"epochs": 2, "lr": 0.1},
              "finetune": {"epochs": 2, "lr": 0.05, "batch_size": 128},
              "calibration": {"size": 64, "batch_size": 32}}
    result = api.prune(recipe, out=tmp_path / "pruned.pt")
    assert result.pruned["macs"] <= 0.5 * result.dense["macs"]
    assert len(result.plan.kept["conv1"]) < 16  # the first residual stream is pruned on the GPU too
    assert 0.0 <= result.pruned["accuracy"] <= 1.0 and (tmp_path / "pruned.pt").exists()
    loaded = load_pruned(tmp_path / "pruned.pt", map_location="cuda")  # it came back on the CPU before
    assert {p.device.type for p in loaded.parameters()} == {"cuda"}
    x = torch.randn(8, 1, 8, 8, device=CUDA)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), result.model.eval()(x), atol=1e-5)


def test_a_nan_in_a_later_batch_is_refused_on_the_gpu_as_on_the_cpu() -> None:
    """CUDA converts a NaN's bin index to a bin in range, where the CPU's scatter raises: the
    histogram criterion must still refuse the maps (when its scores are read)."""
    from prunetune.exceptions import ConfigError
    from prunetune.pruning.criteria.base import FeatureBatch

    acc = get_criterion("capacity").accumulator(2, source="feature")
    good = torch.rand(4, 2, 3, 3, device=CUDA)
    broken = good.clone()
    broken[1, 0, 2, 2] = float("nan")
    acc.update(FeatureBatch(good))
    acc.update(FeatureBatch(broken))
    with pytest.raises(ConfigError, match="the feature maps hold NaN or inf"):
        acc.result()
