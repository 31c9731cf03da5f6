"""Scoring benchmark: what the calibration pass and each activation criterion cost on ResNet-56.

For ResNet-56 on 32×32 inputs and ``--images`` (256) calibration images on CPU, in batches of
``--batch-size`` (128), this prints a markdown table of:

* the plain forward pass (eval mode, ``torch.no_grad``, no hooks, same batching);
* the calibration pass (:func:`prunetune.pruning.calibration.calibrate`) with every forward-only
  activation criterion at once (``cmi`` and ``taylor`` excluded), the same plus ``taylor`` (which
  adds a backward pass per batch), and the cheap criteria alone (all but ``hrank`` and ``chip``);
* three "floor" rows: a forward pass whose hooks only take the factorisations exact HRank (one
  Cholesky of each map's Gram matrix) and CHIP (one ``eigh`` of each image's c×c Gram matrix) rest
  on, a lower bound for those two criteria as implemented (:func:`factorisation_floor`);
* the calibration pass with each activation criterion alone (``cmi`` with ``--cmi-samples``).

"Activation criteria" are the registered criteria whose needs include ``"activation"`` under their
defaults; ``capacity`` and ``independence`` score from weights by default and are included with
``source="feature"``. Steps are timed round-robin (every step once per repeat, in turn), so load
from other processes falls on all of them alike; the table gives the median of the repeats,
"× plain forward" is the median over repeats of step time / forward time of the same repeat, and
"× floor (both)" the same against the "floor: forward + both" row, with the range of the
per-repeat ratios in brackets (on this project's 2-core machine one run's median has moved by more
than the 1.3× target's margin; the range shows how far to trust it). The last column is the median
number of minor page faults of the step (Unix): a step that gets fresh pages from the kernel for its
temporaries pays for each (about 2.5 µs a 4 KiB page there), and whether it does depends on the
allocator's state, which the steps before it leave. Compare times only between rows whose faults
are alike: in a round of only the forward pass, the all-row and the floor, the floor paid some
240,000 faults a pass and took 0.6 s longer than in this round, and such rounds put the all-row
at 1.29-1.36× its floor where this table puts it near 1.5×.

Then CHIP's fast path (:func:`prunetune.pruning.criteria.chip.chip_scores`, default route) against
a straightforward per-image SVD implementation written here, the official code's method: per image,
the nuclear norm of the c×hw matrix, then for each channel a copy with that row zeroed and its
nuclear norm (``torch.linalg.matrix_norm(..., "nuc")``; float64 where the official code used
float32 rounded to 4 decimals), looping over images and channels. Both run inside forward hooks on
the same ReLU'd feature maps, timing only the CHIP computation. The fast path runs on all images at
all 55 feature points (median of ``--chip-repeats`` passes); the reference once, on the first
``--svd-images`` images of the first batch at every point, and its time is scaled by
images / svd-images (stated in the output; ``--svd-images`` equal to ``--batch-size`` and
``--images`` measures it all). The same loop on the transposed hw×c matrices (same singular values;
MKL's SVD of wide matrices is much slower) gives a second, conservative speed-up. The rankings are
compared on the CI averaged over the images both saw: exact equality of the orders (ties, i.e.
scores equal within 1e-9 of the layer's largest, may come in either order), Kendall's tau and the
top-half sets; the last column is the largest |fast − SVD| (and |SVD(Mᵀ) − SVD(M)|) over the
largest CI.

Usage::

    python benchmarks/scoring.py                     # defaults: 256 images, batch 128, 3 repeats
    python benchmarks/scoring.py --repeats 5 --threads 2 --svd-images 16 --cmi-samples 64
    python benchmarks/scoring.py --skip-cmi --skip-chip-svd       # the timing table only
    python benchmarks/scoring.py --device cuda --images 512 --cmi-samples 256   # on a GPU

``--device`` (``auto``: cuda when available) runs the model, the calibration pass and every
criterion there (CPU-side steps, such as the SVD reference's Python loops, stay as they are);
timings synchronise the device before reading the clock.

Benchmarks are not tests; nothing in the test suite runs this.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from prunetune.models import create_model
from prunetune.pruning.calibration import calibrate
from prunetune.pruning.criteria import ACTIVATION, CRITERIA, get_criterion
from prunetune.pruning.criteria._linalg import batched_linalg
from prunetune.pruning.criteria.activation import _cholesky_info
from prunetune.pruning.criteria.chip import chip_scores, pick_route
from prunetune.pruning.groups import find_groups


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256, help="calibration images (default 256)")
    p.add_argument("--batch-size", type=int, default=128, help="calibration batch size (default 128)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per step (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--data", choices=("randn", "synthetic"), default="randn",
                   help="random-normal images or prunetune's synthetic dataset (default randn)")
    p.add_argument("--cmi-samples", type=int, default=64,
                   help="cmi's 'samples' parameter (criterion default 256 takes hours here; default 64)")
    p.add_argument("--cmi-repeats", type=int, default=1, help="repeats of the cmi row (default 1)")
    p.add_argument("--skip-cmi", action="store_true", help="leave out the cmi row")
    p.add_argument("--svd-images", type=int, default=16,
                   help="images per feature point for the per-image SVD reference (default 16)")
    p.add_argument("--chip-repeats", type=int, default=3,
                   help="timed passes of the CHIP fast path in the comparison (default 3)")
    p.add_argument("--skip-chip-svd", action="store_true", help="leave out the CHIP comparison")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model, the maps and the criteria run (auto: cuda when available)")
    return p.parse_args(argv)


DEVICE = torch.device("cpu")
FLOOR_BOTH = "floor: forward + both"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    return torch.device(name)


def machine_line() -> str:
    mkl = torch.backends.mkl.is_available()
    gpu = (f"GPU {torch.cuda.get_device_name(DEVICE)}" if DEVICE.type == "cuda" else "no GPU used")
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads "
        f"({torch.get_num_interop_threads()} inter-op), os.cpu_count() = {os.cpu_count()}, "
        f"{platform.machine()} {platform.system()}, Python {platform.python_version()}, "
        f"MKL {'yes' if mkl else 'no'}, device {DEVICE}, {gpu}"
    )


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, list[tuple[Tensor, Tensor]]]:
    """ResNet-56 with BN running statistics set by a few train-mode passes over the images."""
    torch.manual_seed(args.seed)
    model = create_model("resnet56")
    groups = find_groups(model, (3, 32, 32))
    if args.data == "synthetic":
        from prunetune.data import load_dataset

        split = load_dataset("synthetic", image_size=32, train_size=args.images, split_seed=args.seed).train
        x, y = split.x[: args.images], split.y[: args.images]
    else:
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.images, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (args.images,), generator=g)
    batches = [(x[i : i + args.batch_size], y[i : i + args.batch_size])
               for i in range(0, args.images, args.batch_size)]
    model.train()
    with torch.no_grad():  # BN running statistics of this data (momentum 0.1, a few passes)
        for _ in range(3):
            for xb, _yb in batches:
                model(xb)
    model.eval()
    model.to(DEVICE)
    batches = [(x.to(DEVICE), y.to(DEVICE)) for x, y in batches]
    return model, groups, batches


def activation_criteria() -> dict[str, tuple[str, dict[str, Any]]]:
    """label -> (registered name, resolved parameters) of every activation criterion."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in sorted(CRITERIA.names()):
        crit = get_criterion(name)
        params = crit.resolve({})
        label = name
        if ACTIVATION not in crit.needs(params) and "source" in params:
            params = crit.resolve({"source": "feature"})
            label = f"{name}[source=feature]"
        if ACTIVATION in crit.needs(params):
            out[label] = (name, params)
    return out


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn: Callable[[], Any]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def minor_faults() -> int | None:
    """This process's minor page faults so far; None where ``resource`` is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def plain_forward(model: torch.nn.Module, batches: list[tuple[Tensor, Tensor]]) -> None:
    with torch.no_grad():
        for x, _y in batches:
            model(x)


def run_calibration(model, groups, batches, criteria: dict[str, dict[str, Any]]) -> None:
    calibrate(model, groups, criteria, batches, device=DEVICE, show_progress=False)


def factorisation_floor(model, groups, batches, which: tuple[str, ...]) -> None:
    """A forward pass whose hooks do only the factorisations exact HRank and CHIP rest on.

    At every feature point, on the ReLU'd maps in float64: ``"hrank"`` forms each h×w map's Gram
    matrix and takes one Cholesky factorisation of it (the cheapest test that settles a map's
    rank, and only the full-rank ones); ``"chip"`` forms each image's c×c Gram matrix and takes its
    ``eigh`` (the spectrum every CI(j) of that image needs). Both split the batch over torch's
    threads as the criteria do. No statistic is kept: this times a lower bound for the two
    criteria as implemented, not a criterion.
    """
    modules = dict(model.named_modules())
    points = sorted({p for g in groups for p in g.feature_points})

    def hook(_m, _i, out: Tensor) -> None:
        x = F.relu(out.detach()).to(torch.float64)
        b, c, h, w = x.shape
        if "hrank" in which:
            maps = x.reshape(b * c, h, w)  # square maps here: the row side, built as hrank builds it
            gram = torch.einsum("...ik,...jk->...ij", maps, maps)
            batched_linalg(_cholesky_info, gram)
        if "chip" in which:
            m = x.reshape(b, c, h * w)
            batched_linalg(torch.linalg.eigh, m @ m.transpose(1, 2))

    handles = [modules[p].register_forward_hook(hook) for p in points]
    try:
        plain_forward(model, batches)
    finally:
        for h in handles:
            h.remove()


def _ratio_cell(ratios: list[float]) -> str:
    """The median of per-repeat ratios and, over several repeats, their range: on a shared machine
    the spread says how far one run's median can be trusted."""
    med = f"{statistics.median(ratios):.2f}×"
    return med if len(ratios) < 2 else f"{med} ({min(ratios):.2f}–{max(ratios):.2f})"


def kendall_tau(a: Tensor, b: Tensor) -> float:
    """Kendall's tau-a of two score vectors (O(C²); C ≤ 64 here)."""
    da = torch.sign(a[:, None] - a[None, :])
    db = torch.sign(b[:, None] - b[None, :])
    c = a.numel()
    return float((da * db).sum() / (c * (c - 1))) if c > 1 else 1.0


def same_order_up_to_ties(fast: Tensor, ref: Tensor) -> tuple[bool, bool]:
    """(argsort equal, argsort equal once ties of ``ref`` are allowed either way)."""
    order_f, order_r = torch.argsort(fast, stable=True), torch.argsort(ref, stable=True)
    exact = bool(torch.equal(order_f, order_r))
    if exact:
        return True, True
    tol = 1e-9 * float(ref.abs().max().clamp(min=1e-300))
    # fast's order sorts ref ascending up to ties: consecutive ref values never drop by more than tol
    ref_in_fast_order = ref[order_f]
    return False, bool((ref_in_fast_order[1:] - ref_in_fast_order[:-1] >= -tol).all())


def chip_reference(maps: Tensor, *, transpose: bool = False) -> Tensor:
    """The official method: per image, ‖M‖_* and, per channel, ‖M with that row zeroed‖_* (SVD).

    ``transpose=True`` takes the nuclear norms of Mᵀ (hw×c, the same singular values): MKL's SVD
    of a wide c×hw matrix is much slower than of its tall transpose, so this is a tuned variant.
    """
    m = maps.detach().reshape(maps.shape[0], maps.shape[1], -1).to(torch.float64)
    b, c, _ = m.shape
    out = torch.empty(b, c, dtype=torch.float64, device=m.device)
    for i in range(b):
        full = torch.linalg.matrix_norm(m[i].T if transpose else m[i], ord="nuc")
        for j in range(c):
            zeroed = m[i].clone()
            zeroed[j] = 0.0
            out[i, j] = full - torch.linalg.matrix_norm(zeroed.T if transpose else zeroed, ord="nuc")
    return out


def chip_comparison(model, groups, batches, svd_images: int) -> dict[str, Any]:
    """Time CHIP's fast path on every point and image, and the SVD reference on a subset."""
    modules = dict(model.named_modules())
    points = [p for g in groups for p in g.feature_points]
    state = {"batch": 0}
    fast_s: dict[str, float] = {p: 0.0 for p in points}
    ref_s: dict[str, float] = {p: 0.0 for p in points}
    ref_t_s: dict[str, float] = {p: 0.0 for p in points}
    fast_sub: dict[str, Tensor] = {}
    ref_sub: dict[str, Tensor] = {}
    ref_gap: dict[str, float] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def make_hook(point: str):
        def hook(_m, _i, output: Tensor) -> None:
            maps = F.relu(output.detach())
            shapes[point] = tuple(maps.shape[1:])
            sync()
            t0 = time.perf_counter()
            ci = chip_scores(maps)
            sync()
            fast_s[point] += time.perf_counter() - t0
            if state["batch"] == 0 and svd_images > 0:
                sub = maps[:svd_images]
                t0 = time.perf_counter()
                ref = chip_reference(sub)
                ref_s[point] += time.perf_counter() - t0
                t0 = time.perf_counter()
                ref_t = chip_reference(sub, transpose=True)
                ref_t_s[point] += time.perf_counter() - t0
                ref_sub[point] = ref.mean(0).cpu()
                fast_sub[point] = ci[: sub.shape[0]].mean(0).cpu()
                scale = float(ref.abs().max().clamp(min=1e-300))
                ref_gap[point] = max(float((ci[: sub.shape[0]] - ref).abs().max()),
                                     float((ref_t - ref).abs().max())) / scale

        return hook

    handles = [modules[p].register_forward_hook(make_hook(p)) for p in points]
    try:
        with torch.no_grad():
            for k, (x, _y) in enumerate(batches):
                state["batch"] = k
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {"points": points, "fast_s": fast_s, "ref_s": ref_s, "ref_t_s": ref_t_s,
            "fast_sub": fast_sub, "ref_sub": ref_sub, "ref_gap": ref_gap, "shapes": shapes}


def main(argv: list[str] | None = None) -> int:
    global DEVICE
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    DEVICE = resolve_device(args.device)
    model, groups, batches = build(args)
    n_points = sum(len(g.feature_points) for g in groups)
    crits = activation_criteria()
    forward_only = {lab: v for lab, v in crits.items() if v[0] not in ("cmi", "taylor")}

    def params_of(labels) -> dict[str, dict[str, Any]]:
        return {crits[lab][0]: crits[lab][1] for lab in labels}

    cheap = [lab for lab in forward_only if crits[lab][0] not in ("hrank", "chip")]
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("plain forward pass (no hooks)", lambda: plain_forward(model, batches)),
        (f"calibration, all forward-only activation criteria ({', '.join(forward_only)})",
         lambda: run_calibration(model, groups, batches, params_of(forward_only))),
        ("calibration, all incl. taylor",
         lambda: run_calibration(model, groups, batches, params_of([*forward_only, "taylor"]))),
        (f"calibration, all but hrank and chip ({', '.join(cheap)})",
         lambda: run_calibration(model, groups, batches, params_of(cheap))),
    ]
    steps += [
        ("floor: forward + one Cholesky per map (HRank's rank test)",
         lambda: factorisation_floor(model, groups, batches, ("hrank",))),
        ("floor: forward + one eigh per image's c×c Gram (CHIP's spectrum)",
         lambda: factorisation_floor(model, groups, batches, ("chip",))),
        (FLOOR_BOTH, lambda: factorisation_floor(model, groups, batches, ("hrank", "chip"))),
    ]
    for lab in crits:
        if crits[lab][0] == "cmi":
            continue
        steps.append((f"calibration, {lab} alone",
                      lambda lab=lab: run_calibration(model, groups, batches, params_of([lab]))))

    print("# prunetune scoring benchmark\n")
    print(f"machine: {machine_line()}")
    print(f"model: resnet56, {len(groups)} groups, {n_points} feature points; "
          f"{args.images} images ({args.data}) of 3×32×32 in batches of {args.batch_size}; "
          f"{args.repeats} repeats, round-robin; chip route auto = "
          f"{pick_route(16, 1024)}/{pick_route(32, 256)}/{pick_route(64, 64)} for the three stages\n",
          flush=True)

    for _name, fn in steps[:2]:  # warm-up (allocator, thread pools, lazy imports)
        fn()
    times: dict[str, list[float]] = {name: [] for name, _ in steps}
    faults: dict[str, list[int]] = {name: [] for name, _ in steps}
    for r in range(args.repeats):
        for name, fn in steps:
            before = minor_faults()
            times[name].append(timed(fn))
            if before is not None:
                faults[name].append(minor_faults() - before)
        print(f"  repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    fwd = times[steps[0][0]]
    cmi_label = next((lab for lab in crits if crits[lab][0] == "cmi"), None)
    if cmi_label and not args.skip_cmi:
        name = f"calibration, {cmi_label} alone (samples={args.cmi_samples}, {args.cmi_repeats} run)"
        p = dict(crits[cmi_label][1], samples=args.cmi_samples)
        times[name] = []
        fwd_cmi = []
        for _ in range(args.cmi_repeats):
            fwd_cmi.append(timed(lambda: plain_forward(model, batches)))
            times[name].append(timed(lambda: run_calibration(model, groups, batches, {"cmi": p})))
        steps.append((name, lambda: None))
    else:
        fwd_cmi = []

    floor = times[FLOOR_BOTH]
    print(f"| step | seconds (median of {args.repeats}) | × plain forward | × floor (both): median (range) "
          "| minor page faults |")
    print("|---|---:|---:|---:|---:|")
    for name, _ in steps:
        ts = times[name]
        is_cmi = name.startswith(f"calibration, {cmi_label} alone")
        base = fwd_cmi if is_cmi else fwd
        ratio = statistics.median(t / f for t, f in zip(ts, base))
        to_floor = "—" if is_cmi else _ratio_cell([t / f for t, f in zip(ts, floor)])
        paged = f"{statistics.median(faults[name]):,.0f}" if faults.get(name) else "—"
        print(f"| {name} | {statistics.median(ts):.3f} | {ratio:.2f}× | {to_floor} | {paged} |")
    if fwd_cmi:
        print(f"\n(the cmi row is compared with plain forward passes timed next to it; "
              f"it ran {args.cmi_repeats} time(s))")

    sub = min(args.svd_images, args.batch_size, args.images)
    if args.skip_chip_svd or sub < 1:
        return 0
    print(f"\n## CHIP: fast path vs per-image SVD (official method), {n_points} feature points\n",
          flush=True)
    res = chip_comparison(model, groups, batches, sub)
    fast_runs = [res["fast_s"]]
    for _ in range(args.chip_repeats - 1):  # more timings of the fast path alone
        fast_runs.append(chip_comparison(model, groups, batches, 0)["fast_s"])
    stages: dict[tuple[int, ...], list[str]] = {}
    for p in res["points"]:
        stages.setdefault(res["shapes"][p], []).append(p)
    scale_up = args.images / sub
    print(f"| feature maps (c×h×w) | points | fast s (all images, median of {len(fast_runs)}) | "
          f"SVD s (c×hw, measured) | SVD s (c×hw, ×{scale_up:g}) | speed-up | "
          f"SVD s (hw×c, ×{scale_up:g}) | speed-up vs hw×c | order equal | equal up to ties | "
          "min Kendall τ | top-half sets equal | max |fast − SVD| / max CI |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [*stages.items(), (("all",), res["points"])]
    summary = ""
    for shape, pts in rows:
        f_s = statistics.median(sum(run[p] for p in pts) for run in fast_runs)
        r_meas = sum(res["ref_s"][p] for p in pts)
        r_s = r_meas * scale_up
        rt_s = sum(res["ref_t_s"][p] for p in pts) * scale_up
        exact = ties = top = 0
        taus = []
        for p in pts:
            fv, rv = res["fast_sub"][p], res["ref_sub"][p]
            e, t = same_order_up_to_ties(fv, rv)
            exact += e
            ties += t
            taus.append(kendall_tau(fv, rv))
            k = fv.numel() // 2
            top += set(torch.topk(fv, k).indices.tolist()) == set(torch.topk(rv, k).indices.tolist())
        gap = max(res["ref_gap"][p] for p in pts)
        label = "×".join(map(str, shape)) if shape != ("all",) else "**all**"
        print(f"| {label} | {len(pts)} | {f_s:.3f} | {r_meas:.2f} | {r_s:.1f} | {r_s / f_s:.0f}× | "
              f"{rt_s:.1f} | {rt_s / f_s:.0f}× | {exact}/{len(pts)} | {ties}/{len(pts)} | "
              f"{min(taus):.6f} | {top}/{len(pts)} | {gap:.1e} |")
        if shape == ("all",):
            summary = (f"Overall: fast {f_s:.2f} s vs SVD {r_s:.1f} s ({r_s / f_s:.0f}×; "
                       f"{r_meas:.1f} s measured), or {rt_s:.1f} s ({rt_s / f_s:.0f}×) with the "
                       "transposed SVD.")
    print(f"\nfast path: chip_scores (route auto) on all {args.images} images, timed in the hooks "
          f"(median of {len(fast_runs)} passes). SVD reference: the official loop (per image, clone, "
          f"zero one row, matrix_norm 'nuc', float64) on the first {sub} images of the first batch "
          f"at every point, one run, time × {scale_up:g}; 'hw×c' is the same loop on the "
          f"transposed matrices. Rankings: CI averaged over those {sub} images, fast vs SVD. "
          f"The last column also covers the transposed SVD against the plain one. {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
