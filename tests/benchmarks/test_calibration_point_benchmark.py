"""benchmarks/calibration_point.py keeps running: one seed, one criterion, a 1-epoch dense model, on
the CPU (it once broke silently: it passed train_pruned a keyword that had gone, and nothing ran it)."""

from __future__ import annotations


import pytest

from benchmark_loader import benchmark_script


@pytest.mark.slow  # a 1-epoch dense model and four 1-epoch fine-tunes: about 10 s on one core
def test_one_seed_of_hrank_fills_every_row(capsys) -> None:
    with benchmark_script("calibration_point") as module:
        module.main(["--seeds", "0", "--criteria", "hrank", "--epochs", "1", "--pretrain-epochs", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| hrank |")]
    assert [r.split("|")[2:4] for r in rows] == [
        [" streams ", " block_output "], [" streams ", " bn "], [" uniform ", " block_output "], [" uniform ", " bn "]]
