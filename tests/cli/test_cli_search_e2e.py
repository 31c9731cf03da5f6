"""The user's workflow on a local Ray: search (ASHA on) → pareto → export → prune replays the plan."""

from __future__ import annotations

import json

import pytest
import yaml

ray = pytest.importorskip("ray")
pytest.importorskip("optuna")
pytest.importorskip("mlflow")

from prunetune.cli import main  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_search_pareto_export_prune(tmp_path, capsys) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "recipe": {"model": {"name": "tiny_resnet", "num_classes": 10, "in_channels": 1},
                   "data": {"name": "digits", "image_size": 8, "batch_size": 128},
                   "calibration": {"size": 64}, "pretrain": {"epochs": 2, "batch_size": 128},
                   "finetune": {"epochs": 2, "lr": 0.05, "batch_size": 128}, "device": "cpu"},
        "space": {"ratios": "per_group", "criteria": ["capacity", "independence"], "schedules": ["hard", "sfp"]},
        "trials": 3, "concurrency": 2, "asha": True}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--tracking-uri", uri]
    assert main(["search", "--config", str(config), "--macs-budget", "0.6", "--storage-path", str(tmp_path / "runs"),
                 "--format", "json", *common]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["experiment"] == "tiny" and summary["status"] == "FINISHED"
    # not a terminal: plain progress lines, the phases in order, then the trials and the end
    lines = [line for line in err.splitlines() if line.startswith("[")]
    phases = [line.split("] ", 1)[1].split(":")[0] for line in lines]
    order = ["loading", "scoring", "starting Ray", "screening", "trials", "done (finished)"]
    assert [p for p in dict.fromkeys(phases) if p in order] == order, err
    assert "\r" not in err and sum(" finished: val acc " in line for line in lines) >= 1
    assert set(summary["counts"]) <= {"FINISHED", "KILLED"} and summary["counts"].get("FINISHED", 0) >= 1
    assert sum(summary["counts"].values()) == 3
    assert all(t["macs_ratio"] <= 0.6 + 1e-12 for t in summary["trials"])

    assert main(["pareto", "--experiment", "tiny", "--format", "json", *common]) == 0
    front = json.loads(capsys.readouterr().out)["trials"]
    assert front and all(t["front"] for t in front)

    best = tmp_path / "best.yaml"
    assert main(["export", "--experiment", "tiny", "--out", str(best), "--format", "json", *common]) == 0
    picked = json.loads(capsys.readouterr().out)["trial"]
    assert main(["prune", "--recipe", str(best), "--out", str(tmp_path / "pruned.pt"), "--format", "json"]) == 0
    replay = json.loads(capsys.readouterr().out)
    assert replay["pruned"]["macs"] == picked["macs"] and replay["pruned"]["params"] == picked["params"]
    plan = json.loads((tmp_path / "pruned.plan.json").read_text())
    assert {g: v["kept"] for g, v in plan["groups"].items()} == {
        g: v["kept"] for g, v in yaml.safe_load(best.read_text())["plan"]["groups"].items()}
