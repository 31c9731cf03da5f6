"""benchmarks/cmi_greedy.py keeps running: one small case on the CPU (it once broke silently when the
criterion's internals moved, and nothing ran it until a GPU run)."""

from __future__ import annotations

from benchmark_loader import benchmark_script


def test_small_case_runs_and_the_default_equals_the_reference(capsys) -> None:
    with benchmark_script("cmi_greedy") as module:
        module.main(["--data", "randn", "--samples", "16", "--reference-points", "1", "--device", "cpu",
                     "--stop-gains", "--threads", "1"])
    out = capsys.readouterr().out
    default = next(line for line in out.splitlines() if line.startswith("| fast (default) | **all**"))
    assert "| 3/3 | 3/3 |" in default  # same order and same greedy prefix on the 3 reference points
    # every point's greedy in step (calibration's way): the same orders as point by point, and the reference's
    in_step = [line for line in out.splitlines() if line.startswith("| fast (default) | 55 |")]
    assert len(in_step) == 1 and "| 55/55 | " in in_step[0] and in_step[0].endswith("| 3/3 |")
