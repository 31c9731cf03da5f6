"""benchmarks/scoring.py keeps running: every section (timing table, cmi row, CHIP against the SVD
reference) on 8 images of ResNet-56 on the CPU, one repeat (several seconds). It reaches into the
criteria's internals (_cholesky_info, pick_route), which move."""

from __future__ import annotations

from benchmark_loader import benchmark_script


def test_tiny_run_fills_both_tables(capsys) -> None:
    with benchmark_script("scoring") as module:
        assert module.main(["--images", "8", "--batch-size", "8", "--repeats", "1", "--cmi-samples", "8",
                            "--svd-images", "1", "--chip-repeats", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| calibration, cmi alone (samples=8, 1 run) |" in out
    rows = {line.split(" | ")[0]: line.split(" | ") for line in out.splitlines() if line.startswith("| ")}
    assert rows["| step"][-1] == "minor page faults |"
    # a count for every timed step (Unix), none for cmi, timed apart from the round
    assert rows["| floor: forward + both"][-1].rstrip(" |").replace(",", "").isdigit()
    assert rows["| calibration, cmi alone (samples=8, 1 run)"][-1] == "— |"
    total = next(line for line in out.splitlines() if line.startswith("| **all** | 55 |"))
    assert "55/55" in total.split("|")[10]  # CHIP's fast path orders every point as the SVD does, up to ties
