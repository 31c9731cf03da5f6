"""The fast computations behind HRank, CHIP and the shared per-batch statistics equal the direct ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import prunetune.pruning.criteria.activation  # noqa: F401  (registers the activation criteria)
import prunetune.pruning.criteria.information  # noqa: F401  (registers the information criteria)
from prunetune.pruning.criteria import _linalg
from prunetune.pruning.criteria._linalg import batched_linalg, on_host
from prunetune.pruning.criteria.activation import gram_ranks, matrix_ranks
from prunetune.pruning.criteria.base import FeatureBatch, get_criterion, score
from prunetune.pruning.criteria.chip import chip_scores, chip_scores_svd


def _low_rank_float32(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """float32 maps of every rank 0..min(h, w), some after a ReLU, some rescaled."""
    g = torch.Generator().manual_seed(seed)
    k = min(h, w)
    maps = torch.empty(n, h, w)
    for i in range(n):
        r = i % (k + 1)
        u = torch.randn(h, r, generator=g)
        v = torch.randn(r, w, generator=g)
        m = u @ v
        if i % 3 == 0:
            m = torch.relu(m)
        maps[i] = m * 10.0 ** float(torch.randint(-4, 5, (1,), generator=g))
    return maps


@pytest.mark.parametrize(("h", "w"), [(8, 8), (16, 16), (32, 32), (5, 9), (9, 5), (1, 1), (1, 6)])
def test_gram_ranks_equal_float32_matrix_rank(h: int, w: int) -> None:
    maps = _low_rank_float32(60, h, w, seed=h * 100 + w)
    expected = torch.linalg.matrix_rank(maps)
    assert torch.equal(matrix_ranks(maps), expected)
    assert torch.equal(gram_ranks(maps.double()), expected)


def _with_zero_lines(maps: torch.Tensor, seed: int) -> torch.Tensor:
    """``maps`` with random rows and columns zeroed (as a ReLU leaves them), fewer or more of either."""
    g = torch.Generator().manual_seed(seed)
    out = maps.clone()
    n, h, w = out.shape
    for i in range(n):
        out[i, torch.rand(h, generator=g) < (i % 4) / 6] = 0.0
        out[i, :, torch.rand(w, generator=g) < ((i // 4) % 4) / 6] = 0.0
    return out


@pytest.mark.parametrize(("h", "w"), [(8, 8), (16, 16), (5, 9), (9, 5), (1, 6)])
def test_gram_ranks_with_zero_rows_and_columns_equal_float32_matrix_rank(
    h: int, w: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prunetune.pruning.criteria import activation

    k = min(h, w)
    full = torch.randn(96, h, w, generator=torch.Generator().manual_seed(h * 10 + w))
    maps = torch.cat([_with_zero_lines(full, seed=h + w), _with_zero_lines(_low_rank_float32(96, h, w, seed=w), seed=h)])
    solved: list[int] = []

    def spy(fn, x, *args, **kwargs):
        if fn is torch.linalg.eigvalsh:
            solved.append(x.shape[0])
        return batched_linalg(fn, x, *args, **kwargs)

    monkeypatch.setattr(activation, "batched_linalg", spy)
    expected = torch.linalg.matrix_rank(maps)
    assert torch.equal(gram_ranks(maps.double()), expected)
    # full-rank maps with zero lines are settled by the Cholesky tests, whichever side has fewer:
    # only maps whose rank is below both counts of nonzero lines reach eigvalsh
    rows = (maps != 0).any(dim=2).sum(1)
    cols = (maps != 0).any(dim=1).sum(1)
    below = int((expected < torch.minimum(rows, cols)).sum())
    assert sum(solved) == below
    assert (expected[:96] < k).any() and (rows[:96] < h).any() and (cols[:96] < w).any()


def test_gram_ranks_keeps_leading_dimensions_and_refuses_nan() -> None:
    maps = _with_zero_lines(_low_rank_float32(24, 6, 6, seed=3), seed=1).reshape(2, 3, 4, 6, 6)
    assert torch.equal(gram_ranks(maps.double()), torch.linalg.matrix_rank(maps))
    maps[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(torch.linalg.LinAlgError):
        gram_ranks(maps.double())


def test_matrix_ranks_float64_is_matrix_rank() -> None:
    maps = _low_rank_float32(30, 6, 6, seed=1).double()
    assert torch.equal(matrix_ranks(maps), torch.linalg.matrix_rank(maps))


def test_hrank_on_float32_maps_is_the_mean_float32_matrix_rank() -> None:
    maps = _low_rank_float32(7 * 5, 8, 8, seed=2).reshape(7, 5, 8, 8)
    expected = torch.linalg.matrix_rank(maps).to(torch.float64).mean(0)
    torch.testing.assert_close(score("hrank", feature_maps=maps), expected, atol=0, rtol=0)
    half = score("hrank", feature_maps=maps.half())  # promoted to float32, as before
    torch.testing.assert_close(
        half, torch.linalg.matrix_rank(maps.half().float()).to(torch.float64).mean(0), atol=0, rtol=0
    )


def test_batched_linalg_equals_one_call() -> None:
    a = torch.randn(300, 7, 7, dtype=torch.float64)
    g = a @ a.transpose(1, 2)
    assert torch.equal(batched_linalg(torch.linalg.eigvalsh, g, min_chunk=1), torch.linalg.eigvalsh(g))
    lam, vec = batched_linalg(torch.linalg.eigh, g, min_chunk=1)
    ref = torch.linalg.eigh(g)
    assert torch.equal(lam, ref.eigenvalues) and torch.equal(vec, ref.eigenvectors)


class _CudaLike:
    """Stands in for a CUDA tensor in the routing decision (no GPU on the test machines)."""

    def __init__(self, batch: int, n: int, device: str = "cuda") -> None:
        self.device, self.shape = torch.device(device), (batch, n, n)

    def dim(self) -> int:
        return 3


def test_cuda_eigen_solves_of_mid_sizes_go_through_the_host() -> None:
    """The sizes cuSOLVER solves one matrix at a time go to the host; small, large and CPU do not."""
    assert on_host(torch.linalg.eigh, _CudaLike(128, 64))
    assert on_host(torch.linalg.eigvalsh, _CudaLike(128, 33))
    assert not on_host(torch.linalg.eigh, _CudaLike(128, 32))  # batched Jacobi on the GPU
    assert not on_host(torch.linalg.eigvalsh, _CudaLike(64, 256))  # the GPU is faster there
    assert not on_host(torch.linalg.cholesky_ex, _CudaLike(128, 64))
    assert not on_host(torch.linalg.eigh, _CudaLike(128, 64, device="cpu"))


@pytest.mark.parametrize("fn", [torch.linalg.eigh, torch.linalg.eigvalsh])
def test_the_host_route_gives_the_one_call_values(fn, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.randn(200, 40, 40, dtype=torch.float64)
    g = g @ g.transpose(1, 2)
    monkeypatch.setattr(_linalg, "on_host", lambda f, x: x.device.type == "cpu" and f is fn)
    routed, ref = batched_linalg(fn, g, min_chunk=1), fn(g)
    if fn is torch.linalg.eigh:
        assert torch.equal(routed.eigenvalues, ref.eigenvalues) and torch.equal(routed.eigenvectors, ref.eigenvectors)
    else:
        assert torch.equal(routed, ref)


def test_large_cpu_eigvalsh_goes_to_numpy_with_its_values() -> None:
    """From NUMPY_EIGVALSH_MIN_SIZE on, CPU float64 eigvalsh is numpy's: its values, split or not,
    equal torch's to rounding; other calls, sizes, dtypes and devices keep torch's routine."""
    n = _linalg.NUMPY_EIGVALSH_MIN_SIZE
    a = torch.randn(6, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = a @ a.transpose(1, 2) / n
    assert _linalg.via_numpy(torch.linalg.eigvalsh, g)
    assert not _linalg.via_numpy(torch.linalg.eigvalsh, g[:, :-1, :-1])
    assert not _linalg.via_numpy(torch.linalg.eigh, g)
    assert not _linalg.via_numpy(torch.linalg.eigvalsh, g.float())
    assert not _linalg.via_numpy(torch.linalg.eigvalsh, _CudaLike(6, 256))
    routed = batched_linalg(torch.linalg.eigvalsh, g, min_chunk=1)
    assert routed.dtype == torch.float64 and routed.shape == (6, n)
    assert torch.equal(routed, torch.from_numpy(np.linalg.eigvalsh(g.numpy())))
    torch.testing.assert_close(routed, torch.linalg.eigvalsh(g), rtol=0, atol=1e-13 * float(routed.max()))


def test_the_numpy_route_restores_numpys_blas_threads() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    g = torch.eye(_linalg.NUMPY_EIGVALSH_MIN_SIZE, dtype=torch.float64).expand(4, -1, -1).contiguous()
    assert torch.equal(batched_linalg(torch.linalg.eigvalsh, g, min_chunk=1), torch.ones(4, g.shape[-1]).double())
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"] == before


def test_work_split_across_threads_equals_one_call() -> None:
    """split_across_threads: a function of several LAPACK calls per chunk, results concatenated;
    eigvalsh_here picks the routine batched_linalg would (numpy's from NUMPY_EIGVALSH_MIN_SIZE)."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, 12, 12, dtype=torch.float64, generator=g)
    a = a @ a.transpose(1, 2)

    def both(x):
        return _linalg.eigvalsh_here(x), _linalg.eigvalsh_here(x[:, :6, :6])

    full, corner = _linalg.split_across_threads(both, a)
    assert torch.equal(full, torch.linalg.eigvalsh(a)) and torch.equal(corner, torch.linalg.eigvalsh(a[:, :6, :6]))
    big = torch.eye(_linalg.NUMPY_EIGVALSH_MIN_SIZE, dtype=torch.float64)[None]
    assert torch.equal(_linalg.eigvalsh_here(big), torch.from_numpy(np.linalg.eigvalsh(big.numpy())))


def _hard_maps(seed: int, b: int, c: int, size: int) -> torch.Tensor:
    """ReLU maps with a dead channel, a scaled twin, a near-twin, and per-image scales 1e-3..1e3."""
    g = torch.Generator().manual_seed(seed)
    m = torch.relu(torch.randn(b, c, size, size, generator=g, dtype=torch.float64))
    m[:, 1] = 0.0
    m[:, 2] = 2.0 * m[:, 3]
    m[:, 4] = m[:, 5] + 1e-7 * m[:, 6]
    return m * 10.0 ** torch.randint(-3, 4, (b, 1, 1, 1), generator=g).to(torch.float64)


@pytest.mark.parametrize(("b", "c", "size"), [(4, 8, 4), (3, 16, 4), (3, 12, 6), (2, 30, 8)])
def test_quadrature_route_equals_the_svd_reference(b: int, c: int, size: int) -> None:
    maps = _hard_maps(b * c + size, b, c, size)
    ref = chip_scores_svd(maps)
    out = chip_scores(maps, route="quadrature")
    scale = ref.abs().amax(dim=1, keepdim=True)
    assert bool(((out - ref).abs() <= 1e-11 * scale).all())
    assert bool((out >= -1e-14 * scale).all())
    assert bool((out[:, 1] == 0).all() or (out[:, 1].abs() <= 1e-20 * scale[:, 0]).all())
    torch.testing.assert_close(score("chip", feature_maps=maps), out.mean(0), atol=0, rtol=0)


def test_quadrature_rational_levels_reach_below_a_near_dependent_channels_deflated_eigenvalue() -> None:
    """Image 0: channel 4 = channel 0 + 1e-5·channel 1, so G has one zero eigenvalue, channel 1 has a
    weight of about 1e-10 on it, and deleting channel 1 leaves an eigenvalue of about 1e-10·λ⁺: the
    level must reach it (11 here) or CI(1) is off by about √(1e-10·λ⁺). Image 1 adds an exact
    dependence that channel 1 is fully part of (level 2)."""
    from prunetune.pruning.criteria import chip

    g = torch.Generator().manual_seed(3)
    maps = torch.relu(torch.randn(2, 5, 36, generator=g, dtype=torch.float64))
    maps[:, 4] = maps[:, 0] + 1e-5 * maps[:, 1]
    maps[1, 3] = maps[1, 2] + maps[1, 1]
    lam, vec = torch.linalg.eigh(maps @ maps.transpose(1, 2))
    lam, _, nonzero = chip._unit_spectrum(lam)
    assert chip.rational_levels(lam, vec * vec, nonzero).tolist() == [11, 2]
    ref = chip_scores_svd(maps)
    out = chip_scores(maps, route="quadrature")
    assert bool(((out - ref).abs() <= 1e-12 * ref.abs().amax(dim=1, keepdim=True)).all())


def test_quadrature_rational_and_trapezoid_agree_and_an_image_gets_the_same_bits_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prunetune.pruning.criteria import chip

    g = torch.Generator().manual_seed(11)
    maps = torch.relu(torch.randn(6, 12, 7, 7, generator=g, dtype=torch.float64))
    maps[0, 5] = 0.0  # a zero row: zero eigenvalue, weight 1 or 0 on it
    maps[1, 7] = maps[1, 2] + 1e-4 * maps[1, 3]
    maps[2] *= 1e-3
    maps[3, 4] *= 1e-3  # a weak channel: λ_min about 1e-6·λ_max
    m = maps.reshape(6, 12, -1)
    lam, vec = torch.linalg.eigh(m @ m.transpose(1, 2))
    lam, _, nonzero = chip._unit_spectrum(lam)
    levels = chip.rational_levels(lam, vec * vec, nonzero)
    assert len(set(levels.tolist())) >= 3 and int(levels.max()) <= chip.MAX_LEVEL  # mixed, all rational
    out = chip_scores(maps, route="quadrature")
    # from an image's spectrum on, its CIs are the bits it gets alone, on either grid (torch's batched
    # eigh itself may differ from a single one in the last bits: seen at 5×5)
    for c in (5, 10, 16):
        many = torch.relu(torch.randn(15, c, 6, 6, generator=g, dtype=torch.float64)).reshape(15, c, 36)
        lam_m, vec_m = torch.linalg.eigh(many @ many.transpose(1, 2))
        lam_m, _, nonzero_m = chip._unit_spectrum(lam_m)
        w_m = vec_m * vec_m
        for grid_max in (chip.MAX_LEVEL, 0):
            monkeypatch.setattr(chip, "MAX_LEVEL", grid_max)
            level_m = chip.rational_levels(lam_m, w_m, nonzero_m)
            batch = chip._spectral_ci(lam_m, w_m, level_m)
            for i in range(15):
                alone = chip._spectral_ci(lam_m[i : i + 1], w_m[i : i + 1], level_m[i : i + 1])
                assert torch.equal(alone[0], batch[i])
        monkeypatch.undo()
    monkeypatch.setattr(chip, "MAX_LEVEL", 0)  # the trapezoid rule for every image
    trapezoid = chip_scores(maps, route="quadrature")
    scale = out.abs().amax(dim=1, keepdim=True)
    assert bool(((out - trapezoid).abs() <= 3e-13 * scale).all())
    assert not torch.equal(out, trapezoid)


def test_exact_zero_rows_get_exact_weights_only_where_the_zero_eigenvalues_are_theirs() -> None:
    """Channel 0 is a zero row: G's eigenvector for 0 is e_0, so w[0] sits on λ = 0 alone and the other
    rows have no weight there. Rounding of 1e-20 there would stand for a deleted-row eigenvalue of
    about 1e-20 and push the level past the table; set to 0, the level is that of λ⁺ = 0.02."""
    from prunetune.pruning.criteria import chip

    lam = torch.tensor([[0.0, 0.02, 0.3, 1.0]], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    w = torch.zeros(1, 4, 4, dtype=torch.float64)
    w[0, 0, 0] = 1.0
    w[0, 1:, 1:] = q * q
    zero_rows = torch.tensor([[True, False, False, False]])
    nonzero = torch.ones(1, 1, dtype=torch.bool)
    exact_level = chip.rational_levels(lam, w, nonzero)
    assert exact_level.tolist() == [2]
    for stray, cleaned in ((1e-20, True), (1e-6, False)):  # STRAY_WEIGHT = 1e-8
        noisy = w.clone()
        noisy[0, 1:, 0] = stray
        noisy[0, 0, 1:] = stray
        assert int(chip.rational_levels(lam, noisy, nonzero)[0]) > 2
        given = noisy.clone()
        share = chip._exact_zero_rows(lam, given, zero_rows)
        assert torch.equal(given, w if cleaned else noisy)
        assert torch.equal(chip.rational_levels(lam, given, nonzero, share), chip.rational_levels(lam, given, nonzero))
        assert (chip.rational_levels(lam, given, nonzero, share).tolist() == [2]) == cleaned
    # as many zero eigenvalues as zero rows is required: a second zero eigenvalue leaves w as it is
    two = lam.clone()
    two[0, 1] = 0.0
    given = w.clone()
    given[0, 1:, 0] = 1e-20
    kept = given.clone()
    chip._exact_zero_rows(two, given, zero_rows)
    assert torch.equal(given, kept)


def test_quadrature_route_zero_and_single_row_images() -> None:
    maps = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    maps[1, 0] = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # one nonzero row: CI = its norm
    out = chip_scores(maps, route="quadrature")
    expected = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, atol=1e-13, rtol=0)


def test_quadrature_grid_ends_on_orthogonal_rows() -> None:
    """Orthogonal rows: CI(j) is row j's norm exactly. φ_j(s) = λ_j/(λ_j + s) is 1 below the grid
    and ~λ_j/s above it, so this sees both closed-form ends (leaving out the part below the first
    node costs 6e-13 of σ_max; the sum above the last node, far more)."""
    sigma = torch.tensor([3.0, 1.5, 0.75, 3e-3, 3e-6], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    maps = (sigma[:, None] * q[:5]).reshape(1, 5, 2, 4)
    out = chip_scores(maps, route="quadrature")
    torch.testing.assert_close(out[0], sigma, atol=1e-13 * float(sigma.max()), rtol=0)


def test_quadrature_chunked_equals_unchunked_and_auto_picks_it() -> None:
    maps = _hard_maps(5, 6, 8, 4)
    full = chip_scores(maps, route="quadrature")
    torch.testing.assert_close(chip_scores(maps, route="quadrature", max_memory_mb=1e-3), full,
                               atol=1e-13, rtol=0)
    assert torch.equal(chip_scores(maps), full)  # 8 channels <= 16 pixels: auto = quadrature
    # the gram route loses about 1e-8 relative on the near-twin rows (module docstring of chip)
    torch.testing.assert_close(chip_scores(maps, route="gram"), full, atol=1e-9, rtol=1e-6)


def test_quadrature_node_work_in_blocks_of_images_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from prunetune.pruning.criteria import chip

    maps = _hard_maps(7, 6, 8, 4)
    whole = chip_scores(maps, route="quadrature")
    per_image = 8 * (4 * 8 * 116 + 2 * 8 * 8)
    monkeypatch.setattr(chip, "NODE_BLOCK_BYTES", 2 * per_image)  # blocks of 2 images (3 on fewer nodes)
    assert torch.equal(chip_scores(maps, route="quadrature"), whole)
    # inside memory chunks of 3 images (blocks of 2 and 1 in each): each image's row in its place
    chunk_mb = 3 * 8 * (3 * 8 * 8 + 5 * 8 * 116 + 8 * 16) / 2**20
    torch.testing.assert_close(chip_scores(maps, route="quadrature", max_memory_mb=chunk_mb), whole,
                               atol=1e-13, rtol=0)


def test_zero_shares_sum_the_weights_on_zero_eigenvalues_per_image() -> None:
    """Images with 0, 1 and 3 zero eigenvalues (ascending, so first) side by side: each channel's
    share is its weight on them over its total weight, and exactly 0 for an image without any."""
    from prunetune.pruning.criteria import chip

    g = torch.Generator().manual_seed(6)
    lam = torch.sort(torch.rand(5, 6, generator=g, dtype=torch.float64) + 0.1, dim=1).values
    zeros = [0, 1, 3, 0, 2]
    for n, z in enumerate(zeros):
        lam[n, :z] = 0.0
    w = torch.rand(5, 6, 6, generator=g, dtype=torch.float64)
    direct = torch.stack([w[n, :, :z].sum(dim=1) / w[n].sum(dim=1) for n, z in enumerate(zeros)])
    share = chip._zero_shares(lam, w)
    torch.testing.assert_close(share, direct, atol=1e-15, rtol=0)
    assert bool((share[[0, 3]] == 0).all()) and bool((share[[1, 2, 4]] > 0).all())
    # an image's shares are the same bits beside any neighbour (64 channels, 3 to 40 zero eigenvalues,
    # beside one with 63: summed over the batch's longest run of zeros they moved by up to 2e-16)
    for z in range(3, 41):
        one = torch.sort(torch.rand(1, 64, generator=g, dtype=torch.float64), dim=1).values
        one[0, :z] = 0.0
        other = torch.zeros(1, 64, dtype=torch.float64)
        other[0, 63] = 1.0
        weights = torch.rand(2, 64, 64, generator=g, dtype=torch.float64)
        alone = chip._zero_shares(one, weights[:1])
        assert torch.equal(chip._zero_shares(torch.cat([one, other]), weights)[:1], alone), z


def test_shared_batch_statistics_equal_separate_batches() -> None:
    """Accumulators fed one FeatureBatch (as calibration does) equal accumulators fed their own."""
    g = torch.Generator().manual_seed(3)
    maps = torch.relu(torch.randn(6, 5, 4, 4, generator=g))  # float32, as in calibration
    labels = torch.arange(6) % 2
    cases = [("hrank", {}), ("dfs", {}), ("sfs", {}), ("dfs_sfs", {}), ("chip", {}),
             ("capacity", {"source": "feature"}), ("independence", {"source": "feature"})]
    shared = {n: get_criterion(n).accumulator(5, **p) for n, p in cases}
    own = {n: get_criterion(n).accumulator(5, **p) for n, p in cases}
    for part in (slice(0, 4), slice(4, 6)):
        batch = FeatureBatch(maps[part], maps[part], labels[part])
        for acc in shared.values():
            acc.update(batch)
        for acc in own.values():
            acc.update(FeatureBatch(maps[part].clone(), maps[part], labels[part]))
    for name, _ in cases:
        assert torch.equal(shared[name].result(), own[name].result()), name
    # and the M-std is torch's population std in float64, to rounding (two-pass vs Welford)
    x = maps.reshape(6, 5, -1).to(torch.float64)
    mstd = x.std(dim=-1, unbiased=False)
    expected = (mstd[:4].sum(0) + mstd[4:].sum(0)) / 6
    torch.testing.assert_close(own["dfs"].result(), expected, atol=0, rtol=1e-14)


@pytest.mark.parametrize("block_rows", [None, 3])  # None: one block; 3: rows taken 3 at a time
def test_population_std_is_torch_std_and_exactly_zero_on_constant_maps(block_rows, monkeypatch) -> None:
    from prunetune.pruning.criteria import _common
    from prunetune.pruning.criteria._common import population_std

    if block_rows:
        monkeypatch.setattr(_common, "BLOCK_BYTES", block_rows * 49 * 8)

    g = torch.Generator().manual_seed(4)
    x = torch.relu(torch.randn(50, 7, 49, generator=g)).to(torch.float64) * 1e3 + 5.0
    torch.testing.assert_close(population_std(x), x.std(dim=-1, unbiased=False), atol=0, rtol=1e-13)
    const = torch.full((3, 49), 0.1, dtype=torch.float32).to(torch.float64)  # 49: not a power of 2
    assert bool((population_std(const) == 0).all())
    # near-constant rows (mean 1e4, std 1e-2) beside ordinary ones: the one-pass difference would
    # cancel to noise (about 1e-4 relative), so those rows must take the two-pass formula, whose
    # mean carries about eps·1e4 (1e-10 of the std)
    near = torch.cat([1e4 + 1e-2 * torch.randn(5, 49, generator=g, dtype=torch.float64), x[0, :3]])
    torch.testing.assert_close(population_std(near), near.std(dim=-1, unbiased=False), atol=0, rtol=1e-8)
    assert bool((population_std(torch.zeros(2, 49, dtype=torch.float64)) == 0).all())


def _sfs_order_naive(cos: torch.Tensor, mstd: torch.Tensor) -> list[int]:
    """The SFS rule with a full search every step: most similar alive pair (first in row-major
    order among equals), remove the lower M-std member (equal: the higher index)."""
    c = cos.shape[0]
    alive = list(range(c))
    removed = []
    while len(alive) > 1:
        best = None
        for i in alive:
            for j in alive:
                if i != j and (best is None or cos[i, j] > cos[best[0], best[1]]):
                    best = (i, j)
        a, b = min(best), max(best)
        r = a if mstd[a] < mstd[b] else b
        removed.append(r)
        alive.remove(r)
    return removed + alive


def test_sfs_order_equals_the_naive_rule_with_ties() -> None:
    from prunetune.pruning.criteria.similarity import sfs_order

    g = torch.Generator().manual_seed(11)
    for trial in range(40):
        c = 2 + trial % 9
        x = torch.round(torch.relu(torch.randn(c, 6, generator=g, dtype=torch.float64)))
        n = x.norm(dim=1).clamp(min=1e-3)  # zero rows: cosine 0
        cos = torch.round((x @ x.T) / (n[:, None] * n[None, :]) * 4) / 4  # many equal pairs
        mstd = torch.round(torch.rand(c, generator=g, dtype=torch.float64) * 2)  # equal M-stds
        assert sfs_order(cos, mstd) == _sfs_order_naive(cos, mstd), trial


@pytest.mark.parametrize("int64_counts", [False, True])  # rows short enough for int32 counts, or not
@pytest.mark.parametrize("block_rows", [None, 2])  # None: one block; 2: rows taken 2 at a time
def test_bin_counts_equal_numpy_histogram_per_row(block_rows, int64_counts, monkeypatch) -> None:
    import numpy as np

    from prunetune.pruning.criteria import _common, information
    from prunetune.pruning.criteria._scratch import reuse_scratch
    from prunetune.pruning.criteria.information import bin_counts

    if block_rows:
        monkeypatch.setattr(_common, "BLOCK_BYTES", block_rows * 3000 * 8)
    if int64_counts:
        monkeypatch.setattr(information, "INT32_COUNTS_BELOW", 3000)

    g = torch.Generator().manual_seed(5)
    # ReLU'd rows with many exact zeros, plus values beyond both ends of the range
    x = torch.relu(torch.randn(7, 3000, generator=g)) * 3.0 - 0.25
    x[:, :5] = torch.tensor([-9.0, -0.3, 4.0, 7.5, 100.0])
    lo, hi, bins = -0.2, 4.0, 37
    # float32 values at and next to the bin edges: float32 arithmetic would bin some of them apart
    edges = torch.tensor([lo + k * (hi - lo) / bins for k in range(1, bins)], dtype=torch.float64).float()
    near = torch.cat([edges, torch.nextafter(edges, torch.tensor(9.0)), torch.nextafter(edges, torch.tensor(-9.0))])
    x[:, 5 : 5 + near.numel()] = near
    counts = bin_counts(x, lo, hi, bins)
    assert counts.shape == (7, bins) and counts.dtype == torch.float64
    for row, got in zip(x.to(torch.float64).numpy(), counts.numpy()):
        expected, _ = np.histogram(np.clip(row, lo, np.nextafter(hi, lo)), bins=bins, range=(lo, hi))
        assert np.array_equal(got, expected.astype(np.float64))
    with reuse_scratch():  # as in a calibration pass: the index buffers reused, then a smaller input
        assert torch.equal(bin_counts(x, lo, hi, bins), counts)
        small = bin_counts(x[:3, :2000], lo, hi, bins)
    assert torch.equal(small, bin_counts(x[:3, :2000], lo, hi, bins))


def test_bin_counts_keeps_only_block_sized_buffers_for_the_pass() -> None:
    """Inside a calibration pass the index buffers of a block of rows are kept for the next call; those
    of rows too long for a block (one block of the whole tensor, as large as the maps' float64 copy)
    are not, or they would sit beside the pass's other scratch tensors until it ends."""
    from prunetune.pruning.criteria import _common, _scratch
    from prunetune.pruning.criteria.information import bin_counts

    short_rows = torch.rand(64, 2048, dtype=torch.float64)  # 16 KB a row: blocks of 128 rows
    long_rows = torch.rand(4, _common.BLOCK_BYTES // 8, dtype=torch.float64)  # a row over half a block
    with _scratch.reuse_scratch():
        bin_counts(long_rows, 0.0, 1.0, 8)
        assert not any(tag.startswith("bin_counts") for tag in _scratch._LOCAL.pool)
        bin_counts(short_rows, 0.0, 1.0, 8)
        assert {tag for tag in _scratch._LOCAL.pool if tag.startswith("bin_counts")} == {"bin_counts_pos",
                                                                                          "bin_counts_idx"}


def test_per_image_grams_are_shared_by_chip_and_sfs() -> None:
    """CHIP factorises each image's Gram matrix; sfs sums them (= the Gram of the concatenated maps)."""
    from prunetune.pruning.criteria._common import channel_major64, image_grams

    g = torch.Generator().manual_seed(9)
    maps = torch.relu(torch.randn(5, 6, 4, 4, generator=g))
    batch = FeatureBatch(maps, maps, None)
    grams = image_grams(batch, maps)
    m64 = maps.reshape(5, 6, -1).to(torch.float64)
    torch.testing.assert_close(grams, m64 @ m64.transpose(1, 2), atol=0, rtol=1e-15)
    f = channel_major64(batch, maps)
    torch.testing.assert_close(grams.sum(0), f @ f.T, atol=0, rtol=1e-14)
    for route in ("quadrature", "gram"):
        torch.testing.assert_close(chip_scores(m64, route=route, grams=grams), chip_scores(m64, route=route),
                                   atol=1e-15, rtol=0)


@pytest.mark.parametrize(("c", "size"), [(6, 4), (20, 2)])  # C ≤ h·w: the per-image Grams; C > h·w: one F Fᵀ
def test_channel_gram_is_the_shared_second_moment_matrix(c: int, size: int) -> None:
    from prunetune.pruning.criteria._common import _MEMO_ATTR, channel_gram, channel_major64

    g = torch.Generator().manual_seed(4)
    maps = torch.relu(torch.randn(5, c, size, size, generator=g))
    batch = FeatureBatch(maps, maps, None)
    f = channel_major64(batch, maps)
    gram = channel_gram(batch, maps)
    torch.testing.assert_close(gram, f @ f.T, atol=0, rtol=1e-14)
    assert ("image_grams" in getattr(batch, _MEMO_ATTR)) == (c <= size * size)
    assert channel_gram(batch, maps) is gram  # computed once per batch


def test_independence_co_moment_from_the_shared_gram_keeps_its_accuracy_at_the_guard() -> None:
    """The co-moment is Σxxᵀ − m·μμᵀ while every channel has Σx_i² ≤ 1e3·m2_ii: a channel with mean 30
    times its spread (Σx²/m2 ≈ 900, just inside) keeps its correlations to 1e-12 through it. A batch
    with a channel whose mean is 1e3 or 1e4 times its spread takes the centred product."""
    from prunetune.pruning.criteria._common import channel_gram, channel_major64
    from prunetune.pruning.criteria.information import CANCELLATION, _co_moment

    g = torch.Generator().manual_seed(8)
    base = torch.randn(64, 2, 6, 6, generator=g)
    noise = torch.randn(64, 2, 6, 6, generator=g)
    inside = torch.stack([base[:, 0], 30.0 + base[:, 0] + 0.3 * noise[:, 0], base[:, 1]], dim=1)  # float32
    outside = torch.cat([inside, torch.stack([1e4 + base[:, 1] + 0.5 * noise[:, 1], 1e3 + base[:, 0]], dim=1)], 1)
    for maps, fast in ((inside, True), (outside, False)):
        c = maps.shape[1]
        f = maps.to(torch.float64).transpose(0, 1).reshape(c, -1)
        ratio = (f * f).sum(1) / ((f - f.mean(1, keepdim=True)) ** 2).sum(1)
        assert 500 < float(ratio[1]) < CANCELLATION and (float(ratio.max()) > 1e5) != fast
        acc = get_criterion("independence").accumulator(c, source="feature")
        for part in (slice(0, 24), slice(24, 64)):
            batch = FeatureBatch(maps[part], maps[part], None)
            x = channel_major64(batch, maps[part])
            mean = x.mean(dim=1)
            xc = x - mean[:, None]
            uncentred = channel_gram(batch, maps[part]) - torch.outer(mean, mean) * x.shape[1]
            assert torch.equal(_co_moment(batch, maps[part], x, mean), uncentred if fast else xc @ xc.T)
            acc.update(batch)
        rho = torch.corrcoef(f).abs().fill_diagonal_(0.0)
        torch.testing.assert_close(acc.result(), 1.0 - rho.sum(1) / (c - 1), atol=1e-12, rtol=0)


def test_independence_feature_streams_constant_and_offset_channels() -> None:
    """Per-batch centred co-moments merged exactly (Chan): a constant channel of 0.1 gets correlation
    0, and a channel whose mean is 1e9 times its spread keeps its correlation (uncentred sums,
    Σxxᵀ/n − μμᵀ, cancel to noise there: tried in stop 21, scored such a twin as independent)."""
    g = torch.Generator().manual_seed(5)
    maps = torch.relu(torch.randn(40, 4, 5, 5, generator=g)) + 0.5  # float32, as in calibration
    maps[:, 1] = 0.1  # a soft-pruned filter's BN bias: constant but not zero
    maps = maps.to(torch.float64)
    maps[:, 3] = 1e3 + 1e-6 * maps[:, 0]  # large mean, tiny spread: the twin of channel 0
    acc = get_criterion("independence").accumulator(4, source="feature")
    for part in (slice(0, 16), slice(16, 40)):
        acc.update(FeatureBatch(maps[part], maps[part], None))
    f = maps.transpose(0, 1).reshape(4, -1)
    keep = [0, 2, 3]
    rho = torch.zeros(4, 4, dtype=torch.float64)
    rho[torch.tensor(keep)[:, None], torch.tensor(keep)[None, :]] = torch.corrcoef(f[keep]).abs()
    expected = 1.0 - rho.fill_diagonal_(0.0).sum(1) / 3
    torch.testing.assert_close(acc.result(), expected, atol=1e-8, rtol=0)
