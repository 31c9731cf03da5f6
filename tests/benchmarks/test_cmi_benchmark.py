"""benchmarks/cmi_greedy.py keeps running: one small case on the CPU (it once broke silently when the
criterion's internals moved, and nothing ran it until a GPU run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cmi_greedy.py"


def test_small_case_runs_and_the_default_equals_the_reference(capsys) -> None:
    spec = importlib.util.spec_from_file_location("cmi_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cmi_bench"] = module
    try:
        spec.loader.exec_module(module)
        module.main(["--data", "randn", "--samples", "16", "--reference-points", "1", "--device", "cpu",
                     "--stop-gains", "--threads", "1"])
    finally:
        sys.modules.pop("cmi_bench", None)
    out = capsys.readouterr().out
    default = next(line for line in out.splitlines() if line.startswith("| fast (default) | **all**"))
    assert "| 3/3 | 3/3 |" in default  # same order and same greedy prefix on the 3 reference points
