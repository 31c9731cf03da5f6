"""benchmarks/latency.py keeps running: ResNet-20, one short round at batch 1 on one thread, CPU clock,
TorchScript included (a few seconds)."""

from __future__ import annotations

from benchmark_loader import benchmark_script


def test_one_round_times_every_variant(capsys) -> None:
    with benchmark_script("latency") as module:
        module.main(["--model", "resnet20", "--rounds", "1", "--min-time", "0.01", "--batches", "1",
                     "--threads", "1", "--clock", "cpu", "--torchscript"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 10  # header, 8 eager variants and 2 TorchScript copies
    assert rows[1].startswith("| dense, BN | 1.000 |") and "(1.00×)" in rows[1]
    assert rows[-1].startswith("| pruned, folded, round_to 16, TorchScript frozen |")
