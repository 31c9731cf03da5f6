"""One step of the greedy CMI ranking of :mod:`prunetune.pruning.criteria.renyi`: the entropies of
every remaining candidate's joint with the selected channels, and the bound that ends the greedy
once every later CMI is provably 0.

How a step is computed (the greedy keeps the same order and CMI values as the straightforward
implementation, :func:`~prunetune.pruning.criteria.cmi_reference.cmi_ranking_reference`, up to
rounding):

* **Label blocks.** The label Gram matrix is the delta kernel, so S(Y,X_j,S) is the entropy of the
  joint J_j = X_S ∘ X_j with every entry between two samples of different classes set to 0: a
  block-diagonal matrix (after sorting the samples by class) whose spectrum is the union of its
  class blocks' spectra. Those come from eigenvalue problems of the class sizes (about n/k each)
  instead of one n×n problem. Exact; used for α ≥ 1 (α ≠ 2); for α < 1, where the rounding noise of
  zero eigenvalues is raised to the power α, and for α = 2 (Frobenius norms, no eigenvalues), the
  full matrices as before.
* **Shared terms once.** S(S) and S(Y,S) of step t + 1 are S(X_j*,S) and S(Y,X_j*,S) of the channel
  picked at step t, already computed; the running Hadamard joint is updated once per step.
* **Threads and LAPACK.** The batch of a step's eigenvalue problems is split across torch's CPU
  threads (:func:`~prunetune.pruning.criteria._linalg.batched_linalg`). From 192 samples on (the
  default keeps 256), the CPU solves go to numpy's LAPACK, whose tridiagonal reduction is faster
  there than torch's (``_linalg.NUMPY_EIGVALSH_MIN_SIZE``); the eigenvalues agree to rounding. On a
  GPU the batched call runs there.
* **Provable vanishing.** Once the off-diagonal part of the running joint is so small that every
  CMI of every later step is provably below :data:`VANISH_BOUND` bits (:func:`vanishing_bound`; the
  Hadamard product only shrinks off-diagonal entries, so this holds from then on), every later step
  is a tie and the straightforward greedy would append the rest in increasing index order: the
  ranking does exactly that, with values 0, and records where it stopped.

float32 eigenvalues are not used: on the digits ResNet-32 layers the float32 error of S(X_j,S)
(about 1e-6 bits) is close to the gaps between the best candidates of the later steps, so a float32
screen with a safe margin sends most candidates back to float64 and saves little (benchmarks/README.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from prunetune.pruning.criteria._linalg import batched_linalg, eigvalsh_here, split_across_threads
from prunetune.pruning.criteria.matrix_entropy import (
    entropy_of_eigenvalues,
    hadamard_joint,
    label_gram,
    renyi_entropy,
    unit_trace,
)

VANISH_BOUND = 1e-12
"""Bits: the greedy stops once every later CMI is provably within this of 0 (far inside the tie
tolerance, :data:`TIE_TOLERANCE`, so every later step would be a tie)."""


class Evaluator:
    """One layer's greedy state: channel Gram matrices, label blocks and the entropy routines."""

    def __init__(self, a_ch: Tensor, labels: Tensor, alpha: float, max_memory_mb: float) -> None:
        n = a_ch.shape[-1]
        self.a_ch, self.alpha = a_ch, alpha
        self.a_y = label_gram(labels)
        self.blocks = class_blocks(labels) if alpha >= 1.0 and alpha != 2.0 else None
        self.chunk = max(1, int(max_memory_mb * 2**20) // (8 * n * n * 8))
        self.min_chunk = max(1, (64 * 32**3) // max(1, n) ** 3)  # split even a few large problems
        self._key: tuple | None = None
        if alpha == 2.0:  # Frobenius norms: Σ_ab (X_S ∘ X_j)² is one product with X_j² for every j
            self.sq = (a_ch * a_ch).reshape(a_ch.shape[0], n * n)
            self.diag = torch.diagonal(a_ch, dim1=-2, dim2=-1)

    def entropy(self, a: Tensor) -> Tensor:
        """S_α of unit-trace ``Tensor[B, n, n]`` (the batch split across threads)."""
        if self.alpha == 2.0:
            return renyi_entropy(a, 2.0)
        lam = batched_linalg(torch.linalg.eigvalsh, a, min_chunk=self.min_chunk)
        return entropy_of_eigenvalues(lam, self.alpha)

    def label_entropy(self, a: Tensor) -> Tensor:
        """S_α(Y, A) of unit-trace ``Tensor[B, n, n]``: the spectra of A's class blocks."""
        lam = self._block_spectra(a, lambda x: batched_linalg(torch.linalg.eigvalsh, x))
        return entropy_of_eigenvalues(lam, self.alpha)

    def _block_spectra(self, a: Tensor, solve: Callable[[Tensor], Tensor]) -> Tensor:
        """``Tensor[B, n]``: the eigenvalues of ``a``'s class blocks, each size's blocks in one ``solve``."""
        lams = []
        for idx in self.blocks:  # LongTensor[k, m]: k classes of m samples
            k, m = idx.shape
            lams.append(solve(a[:, idx[:, :, None], idx[:, None, :]].reshape(-1, m, m)).reshape(a.shape[0], k * m))
        return torch.cat(lams, dim=1)

    def _spectra(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """The eigenvalues of ``Tensor[B, n, n]`` and of its class blocks, on this thread: what
        :meth:`entropy` and :meth:`label_entropy` solve, by the same routines, for one chunk of a
        step's candidates (one split across threads and one wait per step instead of one per call)."""
        return eigvalsh_here(a), self._block_spectra(a, eigvalsh_here)

    def const(self, a_s: Tensor | None) -> Tensor:
        """S(Y,S) − S(S) (S(Y) when S is empty): the part of a step's CMI shared by all candidates."""
        if a_s is None:
            return renyi_entropy(self.a_y, self.alpha)
        if self.blocks is None:
            return renyi_entropy(hadamard_joint(self.a_y, a_s), self.alpha) - renyi_entropy(a_s, self.alpha)
        return self.label_entropy(a_s[None])[0] - self.entropy(a_s[None])[0]

    def next_const(self, a_s: Tensor, s_full: Tensor, s_y: Tensor) -> Tensor:
        """The next step's shared term: S(Y,S) and S(S) are the picked candidate's own two terms."""
        return self.const(a_s) if self.blocks is None else s_y - s_full

    def step(self, remaining: list[int], a_s: Tensor | None, const: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(CPU CMIs, S(X_j,S), S(Y,X_j,S)) of every remaining candidate j."""
        if self.blocks is not None:
            return steps_together([(self, remaining, a_s, const)])[0]
        cand = torch.tensor(remaining, device=self.a_ch.device)
        if self.alpha == 2.0:
            return self._frobenius_step(cand, a_s, const)
        full, lab = [], []
        for i in range(0, len(remaining), self.chunk):  # the straightforward form (α < 1)
            joint = self.a_ch.index_select(0, cand[i : i + self.chunk])  # a copy: multiplied in place
            if a_s is not None:
                joint.mul_(a_s)
            ent = self.entropy(unit_trace(torch.cat([joint, joint * self.a_y])))
            full.append(ent[: len(joint)])
            lab.append(ent[len(joint) :])
        s_full, s_y = torch.cat(full), torch.cat(lab)
        return (s_full - s_y + const).cpu(), s_full, s_y

    def together_key(self) -> tuple | None:
        """Evaluators with equal keys can solve their steps in one batch (:func:`steps_together`):
        the label-block form, the same α, sample count, device and labels. ``None``: not that form."""
        if self.blocks is None:
            return None
        if self._key is None:
            blocks = tuple(tuple(b.flatten().tolist()) for b in self.blocks)
            self._key = (self.alpha, self.a_ch.shape[-1], str(self.a_ch.device), blocks)
        return self._key

    def _frobenius_step(self, cand: Tensor, a_s: Tensor | None, const: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """α = 2: S = −log₂ ‖J‖_F² with J = X_S ∘ X_j / tr, for every candidate through two
        matrix–vector products with the squared Gram matrices (no n×n joint per candidate)."""
        n = self.a_ch.shape[-1]
        if a_s is None:
            a_s = torch.full((n, n), 1.0, dtype=torch.float64, device=self.a_ch.device)
        w = a_s * a_s
        wy = w * (self.a_y > 0)  # the label blocks: pairs of one class
        sq = self.sq[cand]
        tr = self.diag[cand] @ torch.diagonal(a_s)
        tr2 = tr * tr
        s_full = -torch.log2((sq @ w.reshape(-1)) / tr2)
        s_y = -torch.log2((sq @ wy.reshape(-1)) / tr2)
        return (s_full - s_y + const).cpu(), s_full, s_y


Step = tuple[Evaluator, list[int], "Tensor | None", Tensor]
"""One greedy step to evaluate: (evaluator, remaining candidates, running joint X_S or ``None``,
the step's shared term S(Y,S) − S(S))."""


def steps_together(steps: list[Step]) -> list[tuple[Tensor, Tensor, Tensor]]:
    """:meth:`Evaluator.step` of several greedies at once (label-block form, equal
    :meth:`Evaluator.together_key`): every candidate joint of every step goes into the same batched
    eigenvalue calls, chunked to the first evaluator's memory bound. Each matrix is solved by the
    routine a step of its own would use, so the values are the same up to rounding (a LAPACK or
    cuSOLVER routine may round a matrix's eigenvalues differently at another place in a batch: up to
    about 1e-13 bits here, as between the thread splits of one step). On a GPU a batched solve of a
    few hundred 256×256 matrices costs little more than one of a few dozen (benchmarks/README.md,
    "gpu"), so the greedies of a model's layers, run in step, cost about what the largest does alone.
    """
    ev0 = steps[0][0]
    n, alpha = ev0.a_ch.shape[-1], ev0.alpha
    pairs = [(k, j) for k, (_, remaining, _, _) in enumerate(steps) for j in remaining]
    if not pairs:
        raise ValueError("steps_together needs at least one candidate")
    full, lab = [], []
    for i in range(0, len(pairs), ev0.chunk):
        chunk = pairs[i : i + ev0.chunk]
        joint = ev0.a_ch.new_empty(len(chunk), n, n)
        at = 0
        while at < len(chunk):  # the chunk's candidates of one step at a time
            k = chunk[at][0]
            end = at
            while end < len(chunk) and chunk[end][0] == k:
                end += 1
            ev, _, a_s, _ = steps[k]
            cand = torch.tensor([j for _, j in chunk[at:end]], device=ev.a_ch.device)
            torch.index_select(ev.a_ch, 0, cand, out=joint[at:end])
            if a_s is not None:
                joint[at:end].mul_(a_s)
            at = end
        # unit trace through the eigenvalues: λ(J / tr J) = λ(J) / tr J
        trace = torch.diagonal(joint, dim1=-2, dim2=-1).sum(-1)[:, None]
        lam, lam_y = split_across_threads(ev0._spectra, joint, min_chunk=ev0.min_chunk)
        full.append(entropy_of_eigenvalues(lam / trace, alpha))
        lab.append(entropy_of_eigenvalues(lam_y / trace, alpha))
    s_full, s_y = torch.cat(full), torch.cat(lab)
    counts = [len(remaining) for _, remaining, _, _ in steps]
    const = torch.stack([torch.as_tensor(c, dtype=s_full.dtype).to(s_full.device) for *_, c in steps])
    cmi = (s_full - s_y + torch.repeat_interleave(const, torch.tensor(counts, device=s_full.device))).cpu()
    return list(zip(cmi.split(counts), s_full.split(counts), s_y.split(counts)))


def class_blocks(labels: Tensor) -> list[Tensor]:
    """Sample indices per class, grouped by class size: ``[LongTensor[k, m], …]`` (k classes of m)."""
    if labels.dim() == 2:
        labels = labels.argmax(dim=1)
    _, inverse = torch.unique(labels, return_inverse=True)
    members = [torch.nonzero(inverse == c).flatten() for c in range(int(inverse.max()) + 1)]
    by_size: dict[int, list[Tensor]] = {}
    for idx in members:
        by_size.setdefault(idx.numel(), []).append(idx)
    return [torch.stack(group) for _, group in sorted(by_size.items())]


def vanishing_bound(e: float, n: int, alpha: float) -> float:
    """Bound on |S_α(M) − log₂ n| for unit-trace M = I/n + E, E off-diagonal, ‖E‖_F ≤ e.

    With x_i = n·μ_i (μ the eigenvalues of E: Σ μ = 0, Σ μ² ≤ e², |μ| ≤ e) and ρ = n·e ≤ 1/2,
    Taylor's theorem gives Σ (1 + x_i)^α = n + R, |R| ≤ α|α−1|/2 · B · Σ x_i², B = max over
    |ξ| ≤ 1/2 of (1 + ξ)^(α−2); so |S_α − log₂ n| = |log₂(1 + R/n)| / |1 − α| ≤ 2·K·n·e²/ln 2 with
    K = α·B/2 while |R/n| ≤ 1/2 (the α = 1 limit is covered by the same bound). Returns ``inf``
    outside that range.
    """
    if n * e > 0.5:
        return math.inf
    k = alpha * max(0.5 ** (alpha - 2.0), 1.5 ** (alpha - 2.0)) / 2.0
    if abs(alpha - 1.0) * k * n * e * e > 0.5:
        return math.inf
    return 2.0 * k * n * e * e / math.log(2.0)


def vanished(a_s: Tensor, alpha: float) -> bool:
    """Whether every CMI of every later greedy step is provably within :data:`VANISH_BOUND` of 0.

    Needs the running joint's diagonal to be 1/n (true for joints of :func:`normalize_gram`
    matrices). Every matrix a later step takes an entropy of (X_S ∘ X_j, its label blocks, X_S and
    its label blocks, renormalised) keeps that diagonal and has off-diagonal entries no larger in
    magnitude than X_S's (kernel entries lie in [0, 1]), so each entropy is within
    :func:`vanishing_bound` of log₂ n, and a CMI (two entropies minus two) within twice that.
    """
    n = a_s.shape[-1]
    diag = torch.diagonal(a_s)
    if n < 2 or float((diag * n - 1.0).abs().max()) > 1e-12:
        return False
    e = float(torch.linalg.matrix_norm(a_s - torch.diag_embed(diag)))
    return 2.0 * vanishing_bound(e, n, alpha) <= VANISH_BOUND
