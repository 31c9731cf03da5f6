"""Rational approximations of √y on [δ, 1] with a uniform relative error (Zolotarev).

For a level L ≥ 1 and δ = 10^(−L), :func:`sqrt_rational` gives M, a_1..a_r > 0 and b_1..b_r > 0 with

    √y ≈ M·y + Σ_k a_k · y / (y + b_k),     |approx / √y − 1| ≤ :data:`RELATIVE_ERROR` on [δ, 1],

and the approximation is 0 at y = 0. A criterion that needs Σ√λ over a spectrum whose nonzero
eigenvalues lie in [δ, 1] can then work with resolvents (λ + b_k)⁻¹ at r points instead of square
roots (CHIP's quadrature route, :mod:`prunetune.pruning.criteria.chip`).

The construction is Zolotarev's best approximation of sign(x) on [−1, −ℓ] ∪ [ℓ, 1] of type
(2r + 1, 2r) (E. I. Zolotarev, 1877; see Nakatsukasa and Freund, SIAM Review 58(3), 2016):

    Z(x) = M · x · Π_{i=1..r} (x² + c_{2i}) / (x² + c_{2i−1}),
    c_i = ℓ² · sc²(i·K′/(2r + 1) | 1 − ℓ²),   K′ = K(1 − ℓ²),

with sc = sn/cn the Jacobi elliptic function and K the complete elliptic integral (both of the
parameter m = modulus²). With y = x² and δ = ℓ², Z(√y) − 1 is the relative error of
M·y·Π (y + c_{2i})/(y + c_{2i−1}) as an approximation of √y, and partial fractions give the form
above with b_k = c_{2k−1}. Its error falls by about a factor e^(−2π²/ln(16/δ)) per added pole:
13 poles keep it below 3e-14 on [1e-2, 1] and 66 on [1e-16, 1] (about 4 per decade), where the
trapezoid rule in ln t over √λ = (2/π)∫ λ/(λ + t²) dt needs about 116 nodes for the same error.

sc is evaluated in float64 through Jacobi's imaginary transformation, sc(u | 1 − δ) =
−i·sn(iu | δ), and the theta-function quotient for sn, whose nome q = exp(−π·K(1 − δ)/K(δ)) ≈ δ/16
is small, so four terms of each series are plenty. The nodes need not be exact: M is chosen so that
the relative error equioscillates on a dense logarithmic grid of [δ, 1], the error is measured on
that grid, and r grows until it is at most :data:`RELATIVE_ERROR` (tests check the result against
an independent high-precision evaluation and on a grid ten times denser).
"""

from __future__ import annotations

import functools
import math

import numpy as np

RELATIVE_ERROR = 3e-14
"""Largest relative error |approx/√y − 1| on [δ, 1] that :func:`sqrt_rational` accepts."""

GRID_POINTS = 4001
"""Points of the logarithmic grid of [δ, 1] on which the error is measured and M balanced."""

MAX_LEVEL = 22


def _agm(a: float, b: float) -> float:
    for _ in range(64):  # quadratic convergence: a few steps, then a and b agree to rounding
        a, b = 0.5 * (a + b), math.sqrt(a * b)
        if abs(a - b) <= 4e-16 * a:
            break
    return a


def _sc_squared(u: float, delta: float, k_delta: float, nome: float) -> float:
    """sc²(u | 1 − δ) from sn(iu | δ) = i·sc(u | 1 − δ) and sn = (θ3/θ2)·θ1(ζ)/θ4(ζ), ζ = πiu/(2K(δ))."""
    y = math.pi * u / (2.0 * k_delta)
    log_q = math.log(nome)
    theta1 = sum((-1) ** n * 2.0 * math.exp((n + 0.5) ** 2 * log_q) * math.sinh((2 * n + 1) * y)
                 for n in range(4))
    theta4 = 1.0 + sum((-1) ** n * 2.0 * math.exp(n * n * log_q) * math.cosh(2 * n * y) for n in range(1, 4))
    theta2 = sum(2.0 * math.exp((n + 0.5) ** 2 * log_q) for n in range(4))
    theta3 = 1.0 + sum(2.0 * math.exp(n * n * log_q) for n in range(1, 4))
    return (theta3 / theta2 * theta1 / theta4) ** 2


def _zolotarev(r: int, delta: float) -> tuple[float, np.ndarray, np.ndarray, float]:
    """(M, a, b, measured error) for r poles on [δ, 1]."""
    k_delta = math.pi / (2.0 * _agm(1.0, math.sqrt(1.0 - delta)))  # K(δ)
    k_comp = math.pi / (2.0 * _agm(1.0, math.sqrt(delta)))  # K(1 − δ)
    nome = math.exp(-math.pi * k_comp / k_delta)
    c = np.array([delta * _sc_squared(i * k_comp / (2 * r + 1), delta, k_delta, nome)
                  for i in range(1, 2 * r + 1)])
    poles, zeros = c[0::2], c[1::2]
    # Π (y + zeros) / Π (y + poles) = 1 + Σ_k res_k / (y + poles_k)
    diff_zeros = zeros[None, :] - poles[:, None]
    diff_poles = poles[None, :] - poles[:, None]
    np.fill_diagonal(diff_poles, 1.0)
    res = np.prod(diff_zeros / diff_poles, axis=1)
    y = np.logspace(math.log10(delta), 0.0, GRID_POINTS)
    ratio = (y + (res[None, :] * y[:, None] / (y[:, None] + poles[None, :])).sum(axis=1)) / np.sqrt(y)
    m = 2.0 / (ratio.min() + ratio.max())
    error = float(np.abs(m * ratio - 1.0).max())
    return float(m), m * res, poles, error


@functools.lru_cache(maxsize=None)
def sqrt_rational(level: int) -> tuple[float, tuple[float, ...], tuple[float, ...]]:
    """(M, (a_k), (b_k)) with |M·y + Σ a_k·y/(y + b_k) − √y| ≤ :data:`RELATIVE_ERROR`·√y on [10^(−level), 1].

    Cached; a level takes a few milliseconds. ``level`` is an int in [1, :data:`MAX_LEVEL`]. The pole
    count starts from the error estimate 4·exp(−2π²r/ln(16/δ)) and grows only where the measured
    error (near float64's own floor from level 16 on) is still above the target.
    """
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= MAX_LEVEL:
        raise ValueError(f"sqrt_rational: level must be an int in [1, {MAX_LEVEL}], got {level!r}")
    delta = 10.0 ** (-level)
    r = max(2, math.ceil(math.log(4.0 / RELATIVE_ERROR) * math.log(16.0 / delta) / (2.0 * math.pi**2)))
    while True:
        m, a, b, error = _zolotarev(r, delta)
        if error <= RELATIVE_ERROR and bool((a > 0).all()) and bool((b > 0).all()):
            return m, tuple(float(v) for v in a), tuple(float(v) for v in b)
        r += 1
        if r > 8 * level + 40:
            raise RuntimeError(f"sqrt_rational: no approximation within {RELATIVE_ERROR} at level {level}")
