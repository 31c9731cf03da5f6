"""CMI benchmark: the fast greedy ranking against the straightforward one, and the fast options.

The ``cmi`` criterion's sample maps are captured at every feature point of a model (one calibration
pass, ``--samples`` images, maps pooled to ``--max-spatial`` pixels as the criterion does). Then, at
every point, on the same maps:

* ``reference``: :func:`prunetune.pruning.criteria.cmi_reference.cmi_ranking_reference`, the greedy
  as it was (two full eigenvalue problems per candidate and step, all steps);
* ``fast``: :func:`prunetune.pruning.criteria.renyi.cmi_greedy` at the criterion's defaults;
* ``knee stop``: ``stop_at_knee=True``, what a recipe or search scores when only the ``cmi_knee``
  cut-off reads ``cmi`` (its knee must equal the reference's on every point);
* the options: ``alpha=2`` (Frobenius norms) and ``stop_gain`` (each value of ``--stop-gains``).

Then the default and the knee stop once more with every point's greedy **in step**, as calibration
runs them on a GPU (``cmi.settle_groups``: each step's eigenvalue problems of all points in shared batched
calls), against the same rankings point by point and against the reference.

Every row gives seconds (one run per point, wall clock and this process's CPU time, summed over the
points; the rankings of one point run one after the other, so load from other processes falls on
all of them alike), the speed-up against the reference and
agreement with the reference at the default α: points whose order is identical, the largest
|Δ CMI| (bits), Kendall's τ (the worst point) of the orders, and on how many points each cut-off
(``cmi_knee`` at scale 1, ``cmi_cumulative`` at ρ = 0.95, ``cmi_marginal`` at ε = 0.05) keeps the
same count. Times are per stage (channel count) and in all.

Models: ``--data digits`` trains (or loads from the cache) the README's ResNet-32 on the bundled
digits, as ``prunetune`` does without a checkpoint; ``--data randn``/``synthetic`` builds an untrained
ResNet-56 on 32×32 inputs with BN statistics set on the data (as ``benchmarks/scoring.py``).
``--reference-points`` limits the slow reference to the first k points of each stage (``0``: all).

Usage::

    python benchmarks/cmi_greedy.py --data digits --model resnet32 --threads 1
    python benchmarks/cmi_greedy.py --data randn --model resnet56 --samples 64 --threads 2
    python benchmarks/cmi_greedy.py --data randn --samples 256 --device cuda   # on a GPU

Benchmarks are not tests; nothing in the test suite runs this.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch

from prunetune.pruning.calibration import calibrate
from prunetune.pruning.criteria import cmi as cmi_module
from prunetune.pruning.criteria import get_criterion
from prunetune.pruning.criteria.cmi_reference import cmi_ranking_reference
from prunetune.pruning.criteria.renyi import CmiRanking, cmi_greedy, finish_sets, greedy_run
from prunetune.pruning.strategies.cutoffs import cumulative_keep, knee_keep, marginal_keep


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=("digits", "randn", "synthetic"), default="digits")
    p.add_argument("--model", default=None, help="resnet32 for digits, resnet56 otherwise")
    p.add_argument("--samples", type=int, default=256, help="cmi 'samples' (criterion default 256)")
    p.add_argument("--max-spatial", type=int, default=64, help="cmi 'max_spatial' (default 64)")
    p.add_argument("--alpha", type=float, default=1.01, help="cmi 'alpha' (default 1.01)")
    p.add_argument("--stop-gains", type=float, nargs="*", default=[1e-2, 1e-3])
    p.add_argument("--reference-points", type=int, default=0,
                   help="run the reference on the first k points of each stage only (0: all)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the maps and the rankings run (auto: cuda when available)")
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, list[tuple[torch.Tensor, torch.Tensor]], str]:
    if args.data == "digits":
        from prunetune.recipes.pipeline import prepare
        from prunetune.recipes.schema import Recipe

        name = args.model or "resnet32"
        recipe = Recipe.from_dict({
            "model": {"name": name, "num_classes": 10, "in_channels": 1}, "data": {"name": "digits"},
            "criterion": "l1", "allocation": {"ratio": 0.5}, "calibration": {"size": args.samples},
        })
        base = prepare(recipe, show_progress=False)
        from prunetune.data import calibration_subset, make_loader

        subset = calibration_subset(base.splits.train, size=args.samples, seed=recipe.calibration.seed)
        batches = list(make_loader(subset, batch_size=128))
        return base.model, base.groups, batches, f"{name} trained on digits (accuracy {base.dense['accuracy']:.3f})"
    sys.path.insert(0, os.path.dirname(__file__))
    import scoring

    ns = argparse.Namespace(images=args.samples, batch_size=128, seed=args.seed, data=args.data)
    model, groups, batches = scoring.build(ns)
    return model, groups, batches, f"resnet56 untrained, BN set on {args.samples} {args.data} images"


def capture(model, groups, batches, params: dict[str, Any], device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (maps, labels) each cmi accumulator ranks, one per feature point, in calibration order
    (the accumulators' ranking replaced by a placeholder while calibration runs)."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    acc = cmi_module._SampleAccumulator
    real = acc._run

    def record(self):
        if self._result is None:
            maps = self.sample_maps()
            labels = torch.cat([lab.to(maps.device) for lab in self.labels])
            seen.append((maps.clone(), labels.clone()))
            c = self.channels
            self._result = (torch.zeros(c, dtype=torch.float64, device=maps.device), torch.arange(c),
                            torch.zeros(c, dtype=torch.float64), torch.tensor([c]))
        return self._result

    settle = acc.__dict__["settle_group"], acc.__dict__["settle_groups"]
    acc._run = record
    acc.settle_group = acc.settle_groups = staticmethod(lambda _accs: None)  # no greedy run here
    try:
        calibrate(model.to(device), groups, {"cmi": params}, batches, device=device, show_progress=False)
    finally:
        acc._run = real
        acc.settle_group, acc.settle_groups = settle
    return seen


def kendall_tau(order_a: torch.Tensor, order_b: torch.Tensor) -> float:
    c = order_a.numel()
    if c < 2:
        return 1.0
    ra, rb = torch.empty(c), torch.empty(c)
    ra[order_a] = torch.arange(c, dtype=torch.float32)
    rb[order_b] = torch.arange(c, dtype=torch.float32)
    da, db = torch.sign(ra[:, None] - ra[None, :]), torch.sign(rb[:, None] - rb[None, :])
    return float((da * db).sum() / (c * (c - 1)))


def cutoffs(values: torch.Tensor) -> tuple[int, int, int]:
    return knee_keep(values), cumulative_keep(values, 0.95), marginal_keep(values, 0.05)


def timed(fn):
    """``(fn(), (wall seconds, CPU seconds of this process))``."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync()
    return out, (time.perf_counter() - t0, time.process_time() - c0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    sys.path.insert(0, os.path.dirname(__file__))
    import scoring

    device = scoring.resolve_device(args.device)
    scoring.DEVICE = device
    model, groups, batches, what = build(args)
    params = get_criterion("cmi").resolve({"samples": args.samples, "max_spatial": args.max_spatial,
                                          "alpha": args.alpha})
    points = capture(model, groups, batches, params, device)
    kw = {"alpha": args.alpha, "sigma_rule": params["sigma_rule"], "gamma": params["gamma"]}
    variants: list[tuple[str, dict[str, Any]]] = [("fast (default)", {})]
    variants += [("knee stop (cmi_knee's cmi)", {"stop_at_knee": True})]
    variants += [("option alpha=2", {"alpha": 2.0})]
    variants += [(f"option stop_gain={g:g}", {"stop_gain": g}) for g in args.stop_gains]

    per_stage: dict[int, list[int]] = {}
    for i, (maps, _) in enumerate(points):
        per_stage.setdefault(maps.shape[1], []).append(i)
    limit = args.reference_points or None
    with_ref = sorted(i for idx in per_stage.values() for i in idx[:limit])
    print("# prunetune CMI greedy benchmark\n")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU used"
    print(f"machine: torch {torch.__version__}, {torch.get_num_threads()} torch threads, os.cpu_count() = "
          f"{os.cpu_count()}, device {device}, {gpu}")
    print(f"model: {what}; {len(points)} feature points "
          + ", ".join(f"{len(v)}×{c} channels" for c, v in sorted(per_stage.items()))
          + f"; samples {args.samples}, maps pooled to ≤ {args.max_spatial} pixels, alpha {args.alpha}; "
          f"reference on {len(with_ref)} points\n", flush=True)

    # point by point, every ranking in turn: load from other processes falls on all of them alike
    ref: dict[int, tuple[torch.Tensor, torch.Tensor, tuple[float, float]]] = {}
    results: dict[str, dict[int, tuple[CmiRanking, tuple[float, float]]]] = {name: {} for name, _ in variants}
    for i, (maps, y) in enumerate(points):
        if i in with_ref:
            (order, values), t = timed(lambda: cmi_ranking_reference(maps, y, **kw))
            ref[i] = (order, values, t)
        for name, extra in variants:
            results[name][i] = timed(lambda: cmi_greedy(maps, y, **{**kw, **extra}))
        done = ", ".join(f"{name} {results[name][i][1][0]:.2f}" for name, _ in variants)
        print(f"  point {i} ({maps.shape[1]} ch) wall s: reference {ref[i][2][0] if i in ref else float('nan'):.2f}, "
              f"{done}", file=sys.stderr, flush=True)
    report(points, per_stage, with_ref, ref, results)

    # every point's greedy in step, as calibration runs them (cmi.settle_groups: one batched solve per step)
    in_step = {}
    for name, extra in [("fast (default)", {}), ("knee stop (cmi_knee's cmi)", {"stop_at_knee": True})]:
        def all_points(extra=extra):
            runs = [greedy_run(maps, y, **{**kw, **extra}) for maps, y in points]
            finish_sets([[r] for r in runs])
            return [r.result for r in runs]

        in_step[name] = timed(all_points)
        print(f"  in step, {name}: wall s {in_step[name][1][0]:.2f}", file=sys.stderr, flush=True)
    report_in_step(points, per_stage, with_ref, ref, results, in_step)
    return 0


def report_in_step(points, per_stage, with_ref, ref, results, in_step) -> None:
    """The layers in step against the same rankings point by point (measured in this run) and
    against the reference (its per-point time in each stage times the stage's points: estimated)."""
    ref_total = sum(sum(ref[i][2][0] for i in idx if i in ref) / max(1, sum(i in ref for i in idx)) * len(idx)
                    for idx in per_stage.values())
    print("\n**Every point's greedy in step** (as calibration runs them on a GPU: each step's eigenvalue problems of "
          f"all {len(points)} points in shared batched calls)\n")
    print("| ranking | points | wall s | CPU s | × faster than point by point (wall) | × faster than the reference "
          "(wall, estimated) | same order as point by point | max \\|Δ CMI\\| against point by point (bits) | "
          "same order as the reference |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (got, (w, c)) in in_step.items():
        alone = results[name]
        w_alone = sum(alone[i][1][0] for i in range(len(points)))
        same = sum(got[i].order.tolist() == alone[i][0].order.tolist() for i in range(len(points)))
        same_ref = sum(got[i].order.tolist() == ref[i][0].tolist() for i in with_ref)
        dv = max(float((got[i].values - alone[i][0].values).abs().max()) for i in range(len(points)))
        print(f"| {name} | {len(points)} | {w:.2f} | {c:.2f} | {w_alone / w:.2f}× | {ref_total / w:.2f}× | "
              f"{same}/{len(points)} | {dv:.1e} | {same_ref}/{len(with_ref)} |")
    print(f"\nThe reference's time for all points is estimated as its per-point time in each stage times the "
          f"stage's points: {ref_total:.2f} s.")


def report(points, per_stage, with_ref, ref, results) -> None:
    print("| ranking | stage | points | wall s | CPU s | × faster (wall / CPU) | same order | same greedy prefix | "
          "max \\|Δ CMI\\| (bits) | min Kendall τ | knee / cumulative / marginal keep equal | "
          "greedy steps / channels |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    stages = [(f"{c} ch", idx) for c, idx in sorted(per_stage.items())] + [("**all**", sorted(range(len(points))))]
    for label, idx in stages:
        on = [i for i in idx if i in ref]
        w_ref, c_ref = (sum(ref[i][2][k] for i in on) for k in (0, 1))
        print(f"| reference | {label} | {len(on)} | {w_ref:.2f} | {c_ref:.2f} | 1.00× / 1.00× | — | — | — | — | — | — |")
        for name, res in results.items():
            w, c = (sum(res[i][1][k] for i in idx) for k in (0, 1))
            w_on, c_on = (sum(res[i][1][k] for i in on) for k in (0, 1))
            speed = f"{w_ref / w_on:.2f}× / {c_ref / c_on:.2f}×" if on and w_on > 0 and c_on > 0 else "—"
            same = sum(res[i][0].order.tolist() == ref[i][0].tolist() for i in on)
            prefix = sum(res[i][0].order[: res[i][0].steps].tolist() == ref[i][0][: res[i][0].steps].tolist()
                         for i in on)
            dv = max((float((res[i][0].values - ref[i][1]).abs().max()) for i in on), default=float("nan"))
            tau = min((kendall_tau(res[i][0].order, ref[i][0]) for i in on), default=float("nan"))
            pairs = [(cutoffs(res[i][0].values), cutoffs(ref[i][1])) for i in on]
            cut_eq = "/".join(str(sum(a[k] == b[k] for a, b in pairs)) for k in range(3))
            steps = sum(res[i][0].steps for i in idx)
            chans = sum(points[i][0].shape[1] for i in idx)
            print(f"| {name} | {label} | {len(idx)} | {w:.2f} | {c:.2f} | {speed} | {same}/{len(on)} | {prefix}/{len(on)} | {dv:.1e} | "
                  f"{tau:.4f} | {cut_eq} (of {len(on)}) | {steps}/{chans} |")
    print("\nSpeed-ups compare the points the reference ran on; Δ CMI, τ and the cut-offs compare with "
          "the reference at the default alpha (alpha=2 is a different Rényi order: its CMIs differ by "
          "construction).")


if __name__ == "__main__":
    sys.exit(main())
