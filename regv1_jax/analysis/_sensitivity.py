"""A whole Sobol' study of the model: sample, evaluate (streamed), indices, optional DGSM.

Sampling rule: each chosen parameter uniform on its prior CI_95 on its own scale
(``ParamSpec.scale``: log-uniform for log-scale parameters), every other parameter at its
prior value (or at ``base``).  Failure rule: a Saltelli block (one base point: its A, B,
AB_j and BA_j rows) with any failed row is dropped whole and counted; the indices use the
complete blocks only.
"""

from __future__ import annotations

import dataclasses
import time

import jax.numpy as jnp
import numpy as np

from ..model import Forcing, Params, ParamSpace
from ._dgsm import DGSM, dgsm, model_unit_fn, widths_of
from ._evaluate import DEFAULT_CHUNK, ChunkStore, Evaluation, evaluate
from ._qoi import QoI
from ._sobol import (
    SobolIndices,
    block_ok,
    block_size,
    check_power_of_two,
    saltelli_base,
    saltelli_rows,
    sobol_indices,
    split_outputs,
    unit_to_params,
)

__all__ = ["DEFAULT_SUBSET", "SobolStudy", "sobol_study"]

# The calibrated parameters, the two thresholds and the two lags.
DEFAULT_SUBSET = ("r_V", "K_V", "lambda1", "lambda2", "eta1", "a1", "a2", "gamma", "b_V",
                  "c_E", "omega_E", "k_E", "theta_star", "SOM_star", "tau_VS", "tau_SH")


@dataclasses.dataclass(frozen=True)
class SobolStudy:
    names: tuple[str, ...]
    N: int
    second_order: bool
    n_rows: int
    indices: SobolIndices
    evaluation: Evaluation
    failed_rows: int
    failed_blocks: int
    variance: float
    mean: float
    dgsm: DGSM | None
    seconds_indices: float
    seconds_dgsm: float


def sobol_study(
    space: ParamSpace,
    forcing: Forcing,
    qoi: QoI,
    *,
    names=DEFAULT_SUBSET,
    N: int = 1024,
    second_order: bool = False,
    seed: int = 0,
    dtype=jnp.float32,
    base: Params | None = None,
    chunk: int = DEFAULT_CHUNK,
    store_dir=None,
    store_key: dict | None = None,
    resume: bool = False,
    progress: bool = False,
    num_resamples: int = 100,
    conf_level: float = 0.95,
    dgsm_n: int = 0,
    **ensemble_kwargs,
) -> SobolStudy:
    """Sobol' indices (and DGSM over the first ``dgsm_n`` A rows) of ``qoi``.

    The model runs ``N * (d + 2)`` (``N * (2d + 2)`` with second order) times in chunks of
    ``chunk`` (solves in ``dtype``); indices in the precision JAX is configured for
    (float64 with x64).  ``store_dir`` streams the chunks to disk (``--resume``).
    """
    names = tuple(names)
    for n in names:
        space.spec(n)
    if len(set(names)) != len(names):
        raise ValueError(f"parameter named twice in {names}")
    if len(names) < 2:
        raise ValueError("Sobol' indices need at least two parameters")
    check_power_of_two(N)
    d = len(names)
    specs = [space.spec(n) for n in names]
    base = (space.prior_values() if base is None else base).astype(dtype)
    U = saltelli_base(N, d, seed=seed)
    n_rows = N * block_size(d, second_order)

    def make(lo, hi):
        return unit_to_params(saltelli_rows(U, lo, hi, second_order), names, specs, base)

    store = None
    if store_dir is not None:
        key = dict(store_key or {}, names=list(names), N=N, second_order=second_order,
                   seed=seed, qoi=qoi.name, dtype=str(np.dtype(dtype)))
        store = ChunkStore(store_dir, key, n_rows, chunk)
    ev = evaluate(make, forcing, qoi, n=n_rows, chunk=chunk, store=store, resume=resume,
                  progress=progress, **ensemble_kwargs)
    ok = block_ok(ev.status, d, second_order)
    t0 = time.perf_counter()
    Y = jnp.asarray(np.where(ev.status == 0, ev.values, 0.0))
    idx = sobol_indices(Y, d, second_order=second_order, ok=ok, num_resamples=num_resamples,
                        conf_level=conf_level, seed=seed)
    t_idx = time.perf_counter() - t0
    Yok = np.reshape(np.asarray(Y), (-1, block_size(d, second_order)))[ok].ravel()
    A, B, _, _ = split_outputs(Yok, d, second_order)
    AB = np.concatenate([np.asarray(A), np.asarray(B)])
    var, mean = float(np.var(AB)), float(np.mean(AB))
    res_dgsm, t_dgsm = None, 0.0
    if dgsm_n:
        t0 = time.perf_counter()
        f = model_unit_fn(qoi, forcing, names, specs, base)
        res_dgsm = dgsm(f, U[:min(dgsm_n, N), :d], widths_of(specs), var)
        t_dgsm = time.perf_counter() - t0
    return SobolStudy(names, N, second_order, n_rows, idx, ev,
                      failed_rows=int(np.sum(ev.status != 0)),
                      failed_blocks=int(np.sum(~ok)), variance=var, mean=mean,
                      dgsm=res_dgsm, seconds_indices=t_idx, seconds_dgsm=t_dgsm)
