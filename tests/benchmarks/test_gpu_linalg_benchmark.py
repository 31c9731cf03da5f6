"""benchmarks/gpu_linalg.py keeps running: its CPU path (device call against the host route, one
repeat) in a few seconds; the cuSOLVER column needs CUDA and shows "—" here."""

from __future__ import annotations

from benchmark_loader import benchmark_script


def test_cpu_path_gives_every_case_and_equal_values(capsys) -> None:
    with benchmark_script("gpu_linalg") as module:
        module.main(["--device", "cpu", "--repeats", "1"])
        cases = module.CASES
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ") and "---" not in line}
    for label, *_ in cases:
        cells = [c.strip() for c in rows[label].strip().strip("|").split("|")]
        assert len(cells) == 10 and float(cells[6]) < 1e-10  # the host route gives the device call's values
