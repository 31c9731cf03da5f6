"""benchmarks/gpu.py: its --smoke path runs on the CPU in seconds, and its search config is valid."""

from __future__ import annotations

import json

import pytest

from benchmark_loader import benchmark_script


@pytest.fixture(scope="module")
def gpu_bench():
    with benchmark_script("gpu") as module:
        yield module


def test_smoke_runs_the_loop_scoring_and_agreement_sections(gpu_bench, tmp_path, capsys) -> None:
    out = tmp_path / "numbers.json"
    assert gpu_bench.main(["--smoke", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| prunetune |" in table and "| plain |" in table and "n/a (CPU)" in table
    numbers = json.loads(out.read_text())
    assert numbers["loop"]["ratio"] > 0 and numbers["loop"]["prunetune"]["images_per_s"] > 0
    assert numbers["scoring"]["all_finite"] and numbers["scoring"]["criteria"] >= 10
    agreement = numbers["agreement"]["criteria"]  # the CPU against itself here: every score equal
    assert {"chip", "hrank", "taylor", "capacity[source=feature]"} <= agreement.keys()
    assert all(r["max_rel_diff"] == 0 and r["same_half"] == r["groups"] and r["finite"] for r in agreement.values())
    assert "search" not in numbers


def test_the_search_section_config_shares_a_gpu_between_trials(gpu_bench, tmp_path) -> None:
    args = gpu_bench.parse_args(["--smoke", "--gpus-per-trial", "0.25", "--trials", "8"])
    config = gpu_bench.search_config(args, str(tmp_path))
    assert config.settings.gpus_per_trial == 0.25 and config.settings.concurrency == 4
    assert config.settings.trials == 8 and config.recipe.model.name == "tiny_resnet"
    with pytest.raises(SystemExit):
        gpu_bench.parse_args(["--sections", "nope"])


def test_asking_for_cuda_without_it_is_one_line(gpu_bench, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is here")
    assert gpu_bench.main(["--device", "cuda", "--sections", "loop"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
