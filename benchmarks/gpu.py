"""GPU readiness: prunetune's fine-tune loop against a plain GPU-resident loop, scoring on the GPU, the
GPU's scores against the CPU's, and a search that shares one GPU between trials (not a test;
``--smoke`` is the CPU path CI runs).

Four sections, each a markdown table:

* **loop**: fine-tune throughput (images/s) of ResNet-56 on CIFAR-shaped synthetic data (3×32×32,
  10 classes) with prunetune's loop (:func:`prunetune.pruning.finetune.finetune` over
  :func:`prunetune.data.make_loader` batches of a split already on the device: mixed precision and
  channels-last on CUDA, as a trial runs it) against a plain loop written here: the data on the
  device once, channels-last, autocast (bf16 where the GPU has it, else fp16 with a GradScaler),
  batches by indexing a device permutation. One warm-up epoch each, then ``--epochs`` timed. On
  CUDA the host synchronisations per training step are counted with
  ``torch.cuda.set_sync_debug_mode("warn")`` (each synchronising call warns), in one more epoch
  run apart from the timed ones (model set-up included, so a few per run are not per step). Target: prunetune's
  loop at least 50% of the plain loop's images/s, and no host sync per step.
* **scoring**: every registered criterion at its defaults (``cmi`` at ``--cmi-samples``) scored in
  one calibration pass on the device (:func:`prunetune.pruning.scores.compute_scores`, no cache),
  against one plain forward pass over the same calibration images.
* **agreement**: every registered criterion scored twice from the same weights and the same
  ``--agreement-images`` calibration images, once on the CPU and once on the device: per criterion,
  the largest difference relative to the largest score, and in how many groups the order and the
  kept half (stable sort, ties by channel index) are the same. Where a kept half differs, it counts as
  a near-tie when every channel that changed sides lies within twice the group's largest difference
  of the cut (rounding moved it across); a wrong path moves channels far from the cut.
* **search**: a ``--trials`` search (default 8) of ResNet-56 on the synthetic data with
  ``gpus_per_trial`` (default 0.25: four trials share one GPU), one fine-tune epoch, sqlite MLflow
  in a temporary folder; wall time, trials per hour, statuses.

Usage::

    python benchmarks/gpu.py                  # on a CUDA machine: the full run (minutes)
    python benchmarks/gpu.py --smoke          # CPU, tiny sizes, tiny_resnet, loop, scoring, agreement: seconds
    python benchmarks/gpu.py --smoke --sections search    # the search section too, tiny (about a minute)
    python benchmarks/gpu.py --sections loop,scoring --json numbers.json
    python benchmarks/gpu.py --sections agreement --cmi-samples 64   # the device's scores against the CPU's

Results of the runs on GPUs: benchmarks/README.md, "gpu".
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prunetune.data import load_dataset, make_loader
from prunetune.models import create_model
from prunetune.pruning.criteria import CRITERIA, get_criterion
from prunetune.pruning.finetune import FinetuneConfig, finetune
from prunetune.pruning.groups import find_groups
from prunetune.pruning.scores import CalibrationSettings, compute_scores

SECTIONS = ("loop", "scoring", "agreement", "search")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (tiny_resnet, 8×8): checks the script runs")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one; --smoke: cpu)")
    p.add_argument("--model", default=None, help="default resnet56 (--smoke: tiny_resnet)")
    p.add_argument("--images", type=int, default=None, help="training images (default 20000; --smoke 256)")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 (--smoke 64)")
    p.add_argument("--epochs", type=int, default=None, help="timed epochs per loop (default 2; --smoke 1)")
    p.add_argument("--calibration", type=int, default=None, help="calibration images (default 1024; --smoke 64)")
    p.add_argument("--cmi-samples", type=int, default=64,
                   help="cmi's sample count in the scoring and agreement sections")
    p.add_argument("--agreement-images", type=int, default=None, help="calibration images of the agreement section "
                   "(default 128; --smoke 32)")
    p.add_argument("--trials", type=int, default=None, help="search trials (default 8; --smoke 2)")
    p.add_argument("--gpus-per-trial", type=float, default=None, help="default 0.25 on CUDA (0 on CPU)")
    p.add_argument("--sections", default=None, help=f"comma-separated, of {', '.join(SECTIONS)} (default: all; "
                   "--smoke: loop,scoring,agreement, the search takes a minute even when tiny)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    small = args.smoke
    args.device = args.device or ("cpu" if small or not torch.cuda.is_available() else "cuda")
    args.model = args.model or ("tiny_resnet" if small else "resnet56")
    args.image_size = 8 if small else 32
    defaults = {"images": (256, 20000), "batch_size": (64, 256), "epochs": (1, 2), "calibration": (64, 1024),
                "agreement_images": (32, 128), "trials": (2, 8)}
    for key, (smoke, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if small else full)
    if args.gpus_per_trial is None:
        args.gpus_per_trial = 0.25 if args.device == "cuda" else 0.0
    chosen = args.sections or ("loop,scoring,agreement" if small else ",".join(SECTIONS))
    args.sections = [s.strip() for s in chosen.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    return args


def synthetic(args: argparse.Namespace, size: int, seed: int = 0):
    """CIFAR-shaped synthetic data (3 channels, 10 classes) at the run's image size."""
    return load_dataset("synthetic", image_size=args.image_size, train_size=size, val_size=0,
                        test_size=max(64, args.batch_size), split_seed=seed).train


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def counting_syncs(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, int | None]:
    """Run ``fn``; on CUDA also count the synchronising calls it made (None elsewhere)."""
    if device.type != "cuda":
        return fn(), None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return out, sum("synchroniz" in str(w.message).lower() for w in caught)


def prunetune_loop(args: argparse.Namespace, split, device: torch.device, epochs: int) -> None:
    model = create_model(args.model, num_classes=10, in_channels=3)
    loader = make_loader(split, batch_size=args.batch_size, shuffle=True, device=device, drop_last=True)
    finetune(model, loader, FinetuneConfig(epochs=epochs, lr=0.05), device=device, show_progress=False)
    sync(device)


def plain_loop(args: argparse.Namespace, split, device: torch.device, epochs: int) -> None:
    cuda = device.type == "cuda"
    model = create_model(args.model, num_classes=10, in_channels=3).to(device)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = split.x.to(device).contiguous(memory_format=fmt)
    y = split.y.to(device)
    bf16 = cuda and torch.cuda.get_device_capability(device)[0] >= 8  # native bfloat16 (Ampere, Hopper)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and not bf16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = x.shape[0] // args.batch_size
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], device=device)
        for i in range(steps):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            with torch.autocast(device.type, dtype=torch.bfloat16 if bf16 else torch.float16, enabled=cuda):
                loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    sync(device)


def loop_section(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    split = synthetic(args, args.images).to(device)  # on the device once, as a search trial holds it
    steps = args.epochs * (args.images // args.batch_size)
    out: dict[str, Any] = {}
    for name, loop in (("prunetune", prunetune_loop), ("plain", plain_loop)):
        loop(args, split, device, 1)  # warm-up: kernels, allocator, autotuning
        t0 = time.perf_counter()
        loop(args, split, device, args.epochs)
        seconds = time.perf_counter() - t0
        # counted in a separate epoch: the sync debug mode's warnings must not slow the timed run
        _, syncs = counting_syncs(device, lambda: loop(args, split, device, 1))
        steps_counted = args.images // args.batch_size
        out[name] = {"images_per_s": steps * args.batch_size / seconds, "seconds": seconds,
                     "syncs_per_step": None if syncs is None else syncs / max(1, steps_counted)}
    out["ratio"] = out["prunetune"]["images_per_s"] / out["plain"]["images_per_s"]
    return out


def all_criteria(cmi_samples: int) -> dict[str, dict[str, Any]]:
    out = {}
    for name in sorted(CRITERIA.names()):
        params = get_criterion(name).resolve({"samples": cmi_samples} if name == "cmi" else {})
        out[name] = params
    return out


def scoring_section(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model = create_model(args.model, num_classes=10, in_channels=3).to(device).eval()
    groups = find_groups(model, (3, args.image_size, args.image_size))
    split = synthetic(args, args.calibration, seed=1)
    batches = list(make_loader(split, batch_size=min(128, args.batch_size), device=device))

    def forward() -> None:
        with torch.no_grad():
            for xb, _ in batches:
                model(xb)
        sync(device)
    forward()
    t0 = time.perf_counter()
    forward()
    forward_s = time.perf_counter() - t0
    criteria = all_criteria(args.cmi_samples)
    t0 = time.perf_counter()
    table = compute_scores(model, groups, criteria, calibration=lambda: batches, calibration_digest="gpu-bench",
                           settings=CalibrationSettings(), use_cache=False, device=device, show_progress=False)
    sync(device)
    score_s = time.perf_counter() - t0
    finite = all(bool(torch.isfinite(s).all()) for per in table.scores.values() for s in per.values())
    return {"criteria": len(criteria), "forward_s": forward_s, "score_s": score_s,
            "x_forward": score_s / forward_s if forward_s else math.nan, "all_finite": finite}


def kept_half(scores: torch.Tensor) -> torch.Tensor:
    """Indices of the higher-scoring half (ties by channel index), sorted: what a 50% cut keeps."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[: (len(scores) + 1) // 2].sort().values


def near_tie(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether every channel that changed sides of a 50% cut between ``a`` and ``b`` lies within twice
    their largest difference of the cut in ``a``: rounding moved it across."""
    ordered = torch.sort(a, descending=True, stable=True).values
    k = (len(a) + 1) // 2
    if k >= len(a):
        return True
    cut = float(ordered[k - 1] + ordered[k]) / 2
    moved = sorted(set(kept_half(a).tolist()) ^ set(kept_half(b).tolist()))
    return bool(((a[moved] - cut).abs() <= 2 * float((a - b).abs().max())).all())


def agreement_section(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    shape = (3, args.image_size, args.image_size)
    split = synthetic(args, args.agreement_images, seed=2)
    host_batches = [(x.cpu(), y.cpu()) for x, y in make_loader(split, batch_size=64, device="cpu")]
    host_model = create_model(args.model, num_classes=10, in_channels=3).eval()
    # every criterion at its defaults, then the two whose feature source is not their default
    passes = {"": all_criteria(args.cmi_samples),
              "[source=feature]": {name: {"source": "feature"} for name in ("capacity", "independence")}}
    scores: dict[str, dict[str, dict[str, torch.Tensor]]] = {"cpu": {}, "device": {}}
    seconds = {"cpu": 0.0, "device": 0.0}
    for where in ("cpu", "device"):
        at = torch.device("cpu") if where == "cpu" else device
        model = copy.deepcopy(host_model).to(at)
        batches = [(x.to(at), y.to(at)) for x, y in host_batches]
        for suffix, criteria in passes.items():
            t0 = time.perf_counter()
            table = compute_scores(model, find_groups(model, shape), criteria, calibration=lambda b=batches: b,
                                   calibration_digest="gpu-agreement", settings=CalibrationSettings(),
                                   use_cache=False, device=at, show_progress=False)
            sync(at)
            seconds[where] += time.perf_counter() - t0
            scores[where].update({name + suffix: per for name, per in table.scores.items()})
    rows = {}
    for name, per in scores["cpu"].items():
        other = scores["device"][name]
        worst, same_order, same_half, near_ties, finite = 0.0, 0, 0, 0, True
        for group, a in per.items():
            b = other[group]
            finite &= bool(torch.isfinite(a).all() and torch.isfinite(b).all())
            scale = float(a.abs().max().clamp_min(1e-300))
            worst = max(worst, float((a - b).abs().max()) / scale)
            same_order += torch.equal(torch.sort(a, descending=True, stable=True).indices,
                                      torch.sort(b, descending=True, stable=True).indices)
            if torch.equal(kept_half(a), kept_half(b)):
                same_half += 1
            elif near_tie(a, b):
                near_ties += 1
        rows[name] = {"groups": len(per), "max_rel_diff": worst, "same_order": same_order,
                      "same_half": same_half, "half_differs_at_near_tie": near_ties, "finite": finite}
    return {"images": args.agreement_images, "cpu_s": seconds["cpu"], "device_s": seconds["device"],
            "criteria": rows}


def search_config(args: argparse.Namespace, folder: str) -> Any:
    """The search config of the search section (its store and results in ``folder``)."""
    from prunetune.search import parse_search_config

    concurrency = max(1, int(1 / args.gpus_per_trial)) if args.gpus_per_trial else 2
    return parse_search_config({
        "recipe": {"model": {"name": args.model, "num_classes": 10, "in_channels": 3},
                   "data": {"name": "synthetic", "image_size": args.image_size, "train_size": args.images,
                            "val_size": 512, "test_size": 512, "batch_size": args.batch_size},
                   "calibration": {"size": min(args.calibration, 256), "batch_size": 64},
                   "pretrain": {"epochs": 1, "batch_size": args.batch_size},
                   "finetune": {"epochs": 1, "lr": 0.05, "batch_size": args.batch_size}, "device": args.device},
        "space": {"ratios": "per_stage", "criteria": ["l1", "fpgm"]}, "screen": {"candidates": 4 * args.trials},
        "trials": args.trials, "concurrency": concurrency, "gpus_per_trial": args.gpus_per_trial,
        "macs_budget": 0.5, "experiment": "gpu-bench",
    }, cwd=folder)


def search_section(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from prunetune.search import run_search

    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        config = search_config(args, tmp)
        t0 = time.perf_counter()
        outcome = run_search(config, show_progress=False)
        wall = time.perf_counter() - t0
    return {"trials": args.trials, "gpus_per_trial": args.gpus_per_trial, "concurrency": config.settings.concurrency,
            "wall_s": wall, "trials_per_hour": 3600 * args.trials / wall, "status": outcome.status,
            "counts": outcome.counts}


def machine_line(device: torch.device) -> str:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU used"
    return (f"{platform.node()}: {gpu}; torch {torch.__version__}, Python {platform.python_version()}, "
            f"{torch.get_num_threads()} CPU threads")


def report(args: argparse.Namespace, numbers: dict[str, Any], device: torch.device) -> None:
    print(f"# GPU readiness ({'smoke, ' if args.smoke else ''}{args.model}, {args.image_size}×{args.image_size}, "
          f"{device.type})\n\n{machine_line(device)}\n")
    if "loop" in numbers:
        n = numbers["loop"]
        print(f"## loop: {args.images} images, batch {args.batch_size}, {args.epochs} timed epoch(s)\n")
        print("| loop | images/s | host syncs per step |\n|---|---|---|")
        for name in ("prunetune", "plain"):
            s = n[name]["syncs_per_step"]
            print(f"| {name} | {n[name]['images_per_s']:.0f} | {'n/a (CPU)' if s is None else f'{s:.2f}'} |")
        verdict = "meets" if n["ratio"] >= 0.5 else "misses"
        print(f"\nprunetune / plain: {n['ratio']:.2f} ({verdict} the 0.5 target)\n")
    if "scoring" in numbers:
        n = numbers["scoring"]
        print(f"## scoring: {n['criteria']} criteria, {args.calibration} calibration images\n")
        print("| step | seconds | × forward |\n|---|---|---|")
        print(f"| one forward pass | {n['forward_s']:.3f} | 1.0 |")
        print(f"| all criteria, one calibration pass | {n['score_s']:.3f} | {n['x_forward']:.1f} |")
        print(f"\nevery score finite: {n['all_finite']}\n")
    if "agreement" in numbers:
        n = numbers["agreement"]
        print(f"## agreement: every criterion on the CPU and on {device.type}, {n['images']} calibration images "
              f"(CPU {n['cpu_s']:.1f} s, {device.type} {n['device_s']:.1f} s)\n")
        print("| criterion | groups | max rel. diff | same order | same kept half | kept half differs at a near-tie "
              "(within 2× the largest difference of the cut) | finite |\n|---|---:|---:|---:|---:|---:|---|")
        for name, r in n["criteria"].items():
            print(f"| {name} | {r['groups']} | {r['max_rel_diff']:.1e} | {r['same_order']} | {r['same_half']} | "
                  f"{r['half_differs_at_near_tie']} | {r['finite']} |")
        print()
    if "search" in numbers:
        n = numbers["search"]
        print(f"## search: {n['trials']} trials, gpus_per_trial {n['gpus_per_trial']}, {n['concurrency']} at a time\n")
        print("| wall | trials/hour | status | trials |\n|---|---|---|---|")
        print(f"| {n['wall_s']:.0f} s | {n['trials_per_hour']:.0f} | {n['status']} | {n['counts']} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: error: --device cuda but CUDA is not available; use --smoke or --device cpu", file=sys.stderr)
        return 2
    sections = {"loop": loop_section, "scoring": scoring_section, "agreement": agreement_section,
                "search": search_section}
    numbers = {name: sections[name](args, device) for name in SECTIONS if name in args.sections}
    report(args, numbers, device)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, **numbers},
                                              indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
