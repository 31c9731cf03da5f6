"""``group_l2`` equals Torch-Pruning's GroupMagnitudeImportance (p=2, mean over layers, no normaliser)."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from prunetune.models import create_model
from prunetune.pruning import tp_bridge
from prunetune.pruning.criteria import score
from prunetune.pruning.groups import find_groups
from prunetune.pruning.scores import weight_scores


def torch_pruning_scores(model: nn.Module, groups, input_shape) -> dict[str, torch.Tensor]:
    graph = tp_bridge.build_graph(model, torch.randn(1, *input_shape))
    importance = tp.importance.GroupMagnitudeImportance(p=2, normalizer=None, group_reduction="mean")
    modules = dict(model.named_modules())
    out = {}
    for g in groups:
        root = modules[g.out_layers[0]]
        fn = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
        group = graph.get_pruning_group(root, fn, idxs=list(range(g.channels)))
        out[g.name] = importance(group).double()
    return out


@pytest.mark.parametrize("name", ["resnet20", "zoo_mobilenet", "zoo_densenet", "zoo_vgg", "zoo_shortcuts",
                                  "zoo_inception", "zoo_transposed"])
def test_group_l2_equals_torch_pruning_group_magnitude(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1).eval()
    for m in model.modules():  # BN scales away from 1, so that they count in the sums
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
    groups = find_groups(model, (1, 16, 16))
    ours = weight_scores(model, groups, "group_l2", {})
    theirs = torch_pruning_scores(model, groups, (1, 16, 16))
    for g in groups:
        assert ours[g.name] == pytest.approx(theirs[g.name], rel=1e-5), g.name


def test_group_l2_by_hand_on_conv_bn_conv() -> None:
    """One group: conv1's 2 filters, BN γ, conv2's 2 input columns; depthwise layers not involved."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 1, 1, bias=False),
                          nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
        model[1].weight.copy_(torch.tensor([3.0, 0.5]))
        model[3].weight.copy_(torch.tensor([[4.0, 1.0]]).view(1, 2, 1, 1))
    groups = find_groups(model.eval(), (1, 2, 2))
    scores = weight_scores(model, groups, "group_l2", {})
    first = next(g for g in groups if g.out_layers[0] == "0")
    # channel 0: (1² + 3² + 4²) / 3 layers; channel 1: (2² + 0.5² + 1²) / 3
    assert scores[first.name].tolist() == pytest.approx([26 / 3, 5.25 / 3])


def test_group_l2_on_one_weight_is_the_squared_filter_norm() -> None:
    w = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 3.0]]]])
    assert score("group_l2", weight=w).tolist() == pytest.approx([5.0, 9.0])
