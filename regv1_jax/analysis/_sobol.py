"""Sobol' indices: Saltelli sampling on scrambled Sobol' sequences and the estimators of
first, total and second order with bootstrap confidence intervals, in JAX.

The sample layout is SALib's (``SALib.sample.sobol.sample`` / ``SALib.analyze.sobol``):
a scrambled Sobol' base sequence of ``N`` points in ``[0, 1)^(2d)`` (``scipy.stats.qmc``),
its first ``d`` columns are A and the last ``d`` are B; every base point gives one *block*
of ``d + 2`` rows (``2d + 2`` with second order): ``A, AB_1..AB_d, [BA_1..BA_d,] B``, where
``AB_j`` is A with column j from B and ``BA_j`` is B with column j from A.  So the same
matrix and outputs can be fed to SALib.

Estimators (on Y centred and scaled by its overall mean and SD, as SALib does):
``S1_j = mean(B (AB_j - A)) / Var`` (Saltelli et al. 2010), ``ST_j = mean((A - AB_j)^2) /
(2 Var)`` (Jansen 1999), ``S2_jk = mean(BA_j AB_k - A B) / Var - S1_j - S1_k`` (Saltelli
2002), Var the variance of ``[A; B]``.  Confidence intervals: ``R`` bootstrap resamples of
the blocks (fixed shape, vmapped), percentile interval and the SALib-style normal half-width
``z * sd``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SobolIndices", "saltelli_base", "saltelli_rows", "saltelli_matrix",
           "block_size", "split_outputs", "sobol_indices", "block_ok", "check_power_of_two"]


def check_power_of_two(n: int, what: str = "N") -> None:
    """Sobol' sequences keep their balance properties only at powers of two."""
    if n < 2 or n & (n - 1):
        raise ValueError(f"{what} = {n} must be a power of two >= 2 (Sobol' sequences are "
                         f"balanced only at powers of two), e.g. {1 << max(n.bit_length() - 1, 1)}"
                         f" or {1 << n.bit_length()}")


def block_size(d: int, second_order: bool) -> int:
    return 2 * d + 2 if second_order else d + 2


def saltelli_base(N: int, d: int, seed: int | None = None, scramble: bool = True
                  ) -> np.ndarray:
    """The base sequence ``(N, 2d)``: ``qmc.Sobol(2d, scramble, seed).random(N)`` (SALib's
    ``sobol.sample`` with ``skip_values=0``)."""
    check_power_of_two(N)
    from scipy.stats import qmc  # imported on use: scipy.stats costs ~0.7 s to import

    return qmc.Sobol(d=2 * d, scramble=scramble, seed=seed).random(N)


def saltelli_rows(base: np.ndarray, lo: int, hi: int, second_order: bool) -> np.ndarray:
    """Rows ``lo..hi-1`` of the Saltelli matrix in the unit cube (``(hi - lo, d)``), built
    from the base sequence without the whole matrix (for streaming)."""
    N, d2 = base.shape
    d = d2 // 2
    step = block_size(d, second_order)
    r = np.arange(lo, hi)
    i, k = r // step, r % step
    A, B = base[i, :d], base[i, d:]
    cols = np.arange(d)[None, :]
    # k = 0: A; 1..d: AB_{k-1}; d+1..2d (second order): BA_{k-d-1}; step-1: B.
    use_b = np.where((k == step - 1)[:, None], True,
                     np.where(((k >= 1) & (k <= d))[:, None], cols == (k - 1)[:, None],
                              np.where(((k > d) & (k < step - 1))[:, None],
                                       cols != (k - d - 1)[:, None], False)))
    return np.where(use_b, B, A)


def saltelli_matrix(base: np.ndarray, second_order: bool = True) -> np.ndarray:
    """The whole Saltelli matrix ``(N * block, d)`` in the unit cube (SALib's layout)."""
    N, d2 = base.shape
    return saltelli_rows(base, 0, N * block_size(d2 // 2, second_order), second_order)


def split_outputs(Y, d: int, second_order: bool):
    """``Y (N * block,)`` -> ``A (N,), B (N,), AB (N, d), BA (N, d) or None``."""
    step = block_size(d, second_order)
    Yb = jnp.reshape(Y, (-1, step))
    A, B, AB = Yb[:, 0], Yb[:, -1], Yb[:, 1:d + 1]
    BA = Yb[:, d + 1:2 * d + 1] if second_order else None
    return A, B, AB, BA


def block_ok(status: np.ndarray, d: int, second_order: bool) -> np.ndarray:
    """Blocks whose every row succeeded (a failed row drops its whole block)."""
    return np.all(np.reshape(np.asarray(status) == 0, (-1, block_size(d, second_order))),
                  axis=1)


def _indices(w, A, B, AB, BA):
    """The estimators with block weights ``w (N,)`` (ones: the point estimate; bootstrap
    counts: one resample, the same numbers as indexing the resampled rows).  Every mean is
    a weighted sum, so a resample costs matrix products, not gathers of ``(N, d, d)``."""
    n = jnp.sum(w)
    m = (w @ A + w @ B) / (2 * n)
    var = (w @ (A * A) + w @ (B * B)) / (2 * n) - m * m
    S1 = (w @ (B[:, None] * (AB - A[:, None]))) / n / var
    ST = 0.5 * (w @ (A[:, None] - AB) ** 2) / n / var
    if BA is None:
        return S1, ST, None
    V2 = ((BA * w[:, None]).T @ AB / n - (w @ (A * B)) / n) / var
    S2 = V2 - S1[:, None] - S1[None, :]
    d = S1.shape[0]
    S2 = jnp.where(jnp.triu(jnp.ones((d, d), bool), k=1), S2, jnp.nan)
    return S1, ST, S2


@dataclasses.dataclass(frozen=True)
class SobolIndices:
    """First, total and (optionally) second-order indices with bootstrap intervals.

    ``*_lo``/``*_hi``: percentile interval at ``conf_level``; ``*_conf``: the SALib-style
    half-width ``z * sd`` of the bootstrap.  ``S2`` is ``(d, d)``, upper triangle (j < k),
    NaN elsewhere.  ``n_blocks``: blocks used (failed blocks dropped)."""

    S1: np.ndarray
    S1_lo: np.ndarray
    S1_hi: np.ndarray
    S1_conf: np.ndarray
    ST: np.ndarray
    ST_lo: np.ndarray
    ST_hi: np.ndarray
    ST_conf: np.ndarray
    S2: np.ndarray | None
    S2_lo: np.ndarray | None
    S2_hi: np.ndarray | None
    S2_conf: np.ndarray | None
    n_blocks: int
    conf_level: float
    num_resamples: int


@jax.jit
def _point(A, B, AB, BA):
    return _indices(jnp.ones_like(A), A, B, AB, BA)


@functools.partial(jax.jit, static_argnames=("num_resamples",))
def _bootstrap(key, A, B, AB, BA, num_resamples):
    """``num_resamples`` resamples of the N blocks with replacement, as counts per block."""
    N = A.shape[0]
    idx = jax.random.randint(key, (num_resamples, N), 0, N)
    w = jnp.zeros((num_resamples, N), A.dtype).at[
        jnp.arange(num_resamples)[:, None], idx].add(1.0)
    return jax.vmap(lambda wr: _indices(wr, A, B, AB, BA))(w)


def sobol_indices(
    Y,
    d: int,
    *,
    second_order: bool = True,
    ok=None,
    num_resamples: int = 100,
    conf_level: float = 0.95,
    seed: int = 0,
) -> SobolIndices:
    """Sobol' indices from model outputs on the Saltelli matrix (SALib's row order).

    **Arguments:**

    - `Y`: outputs ``(N * block,)``, block = ``d + 2`` (``2d + 2`` with `second_order`).
    - `d`: number of parameters.
    - `ok`: optional per-block mask ``(N,)`` (:func:`block_ok`): blocks with a failed row
      are dropped (so the estimators only see complete blocks) and counted by the caller.
    - `num_resamples`, `conf_level`, `seed`: the bootstrap over blocks.

    **Returns:**

    :class:`SobolIndices` (numpy; float64 when x64 is enabled, else float32).
    """
    step = block_size(d, second_order)
    Y = jnp.asarray(Y)
    if Y.ndim != 1 or Y.shape[0] % step:
        raise ValueError(f"Y has {Y.shape} values; expected a multiple of the block size "
                         f"{step} (d = {d}, second_order = {second_order})")
    if ok is not None:
        ok = np.asarray(ok, bool)
        Y = jnp.reshape(jnp.reshape(Y, (-1, step))[np.flatnonzero(ok)], (-1,))
    n_blocks = Y.shape[0] // step
    if n_blocks < 2:
        raise ValueError(f"only {n_blocks} complete Saltelli block(s): too many failed "
                         "samples for any index")
    sd = float(jnp.std(Y))
    if not sd > 0:
        raise ValueError("the quantity of interest is constant over the sample (variance 0"
                         + (")" if sd == 0 else ", or not finite)") + ": no Sobol' index is "
                         "defined; choose parameters that it depends on")
    Y = (Y - jnp.mean(Y)) / sd
    A, B, AB, BA = split_outputs(Y, d, second_order)
    S1, ST, S2 = _point(A, B, AB, BA)
    bS1, bST, bS2 = _bootstrap(jax.random.PRNGKey(seed), A, B, AB, BA, num_resamples)
    a = (1 - conf_level) / 2
    from scipy.stats import norm

    z = norm.ppf(0.5 + conf_level / 2)

    def ci(b):
        b = np.asarray(b)
        return (np.quantile(b, a, axis=0), np.quantile(b, 1 - a, axis=0),
                z * np.std(b, axis=0, ddof=1))

    s1 = ci(bS1)
    st = ci(bST)
    s2 = ci(bS2) if S2 is not None else (None, None, None)
    return SobolIndices(
        S1=np.asarray(S1), S1_lo=s1[0], S1_hi=s1[1], S1_conf=s1[2],
        ST=np.asarray(ST), ST_lo=st[0], ST_hi=st[1], ST_conf=st[2],
        S2=None if S2 is None else np.asarray(S2), S2_lo=s2[0], S2_hi=s2[1], S2_conf=s2[2],
        n_blocks=int(n_blocks), conf_level=conf_level, num_resamples=num_resamples)


def unit_to_params(u, names, specs, base):
    """Map unit-cube rows ``u (c, k)`` to ``Params (c,)``: parameter ``names[j]`` uniform
    on its prior CI_95 on its scale (log scale: log-uniform), the rest at ``base``."""
    import dataclasses as dc

    u = jnp.asarray(u, base.dtype)
    c = u.shape[0]
    full = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (c,)), base)
    vals = {}
    for j, (n, s) in enumerate(zip(names, specs)):
        if s.scale == "log":
            lo, hi = math.log(s.lower), math.log(s.upper)
            vals[n] = jnp.exp(lo + (hi - lo) * u[:, j])
        else:
            vals[n] = s.lower + (s.upper - s.lower) * u[:, j]
    return dc.replace(full, **vals)


def scale_width(spec) -> float:
    """Width of a parameter's sampling interval on its scale (log: in log units)."""
    if spec.scale == "log":
        return math.log(spec.upper) - math.log(spec.lower)
    return spec.upper - spec.lower
