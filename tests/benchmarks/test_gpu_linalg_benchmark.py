"""benchmarks/gpu_linalg.py keeps running: its CPU path (device call against the host route, one
repeat) in a few seconds; the cuSOLVER column needs CUDA and shows "—" here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_linalg.py"


def test_cpu_path_gives_every_case_and_equal_values(capsys) -> None:
    spec = importlib.util.spec_from_file_location("gpu_linalg_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_linalg_bench"] = module
    try:
        spec.loader.exec_module(module)
        module.main(["--device", "cpu", "--repeats", "1"])
        cases = module.CASES
    finally:
        sys.modules.pop("gpu_linalg_bench", None)
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ") and "---" not in line}
    for label, *_ in cases:
        cells = [c.strip() for c in rows[label].strip().strip("|").split("|")]
        assert len(cells) == 10 and float(cells[6]) < 1e-10  # the host route gives the device call's values
