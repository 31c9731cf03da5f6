"""benchmarks/calibration_point.py keeps running: one seed, one criterion, a 1-epoch dense model, on
the CPU (it once broke silently: it passed train_pruned a keyword that had gone, and nothing ran it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "calibration_point.py"


@pytest.mark.slow  # a 1-epoch dense model and four 1-epoch fine-tunes: about 10 s on one core
def test_one_seed_of_hrank_fills_every_row(capsys) -> None:
    spec = importlib.util.spec_from_file_location("calibration_point_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["calibration_point_bench"] = module
    threads = torch.get_num_threads()
    try:
        spec.loader.exec_module(module)
        module.main(["--seeds", "0", "--criteria", "hrank", "--epochs", "1", "--pretrain-epochs", "1"])
    finally:
        sys.modules.pop("calibration_point_bench", None)
        torch.set_num_threads(threads)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| hrank |")]
    assert [r.split("|")[2:4] for r in rows] == [
        [" streams ", " block_output "], [" streams ", " bn "], [" uniform ", " block_output "], [" uniform ", " bn "]]
