"""``KernelRK4``: the RK4 solve of ``simulate`` run by the generated CPU kernels, with
forward-mode derivatives from the kernel of the forward sensitivity system.

``simulate(params, forcing, solver=KernelRK4())`` gives the numbers of
``simulate(..., method="rk4")`` (to 1e-12 in float64) from one call of the generated C++
kernel (``kernel/``) instead of an XLA loop over the time steps.  It composes with JAX:

* ``jax.jvp`` / ``jax.jacfwd``: a ``custom_jvp`` whose rule calls the *tangent kernel* (the
  same RK4 driver on the state ``(y, dy)`` and parameters ``(p, dp)``, generated from
  ``jax.jvp`` of the model's functions): exact forward-mode derivatives of the RK4
  solution, one pass, no XLA compilation of the solve.  This is what makes the
  Levenberg-Marquardt Jacobian of a calibration cheap to compile and to run.
* ``jax.vmap``: a ``custom_vmap`` that folds every batch axis (starts, tangent directions,
  bootstrap replicates) into the kernel's member axis: one kernel call per evaluation for
  the whole batch.
* reverse mode (``jax.grad``) is not provided by the kernel: :meth:`KernelRK4.for_gradient`
  is the XLA ``RK4`` solver (same numbers), which optimisers that need gradients use.

The kernels are built on first use (and cached on disk, ``kernel/_build``); where they are
not available (no C++ compiler, a non-CPU default device, ``REGV1_NO_KERNEL``) the solver
falls back to the XLA ``RK4`` path with the same results.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..model._field import Layout, driver_series
from ..model._forcing import Forcing
from ..model._params import PARAM_NAMES, Params
from ..status import code
from . import kernel as _kernel
from ._simulate import FIELDS, Simulation, with_forcing
from ._solvers import RK4, AbstractSolver

__all__ = ["KernelRK4", "kernel_fields", "kernel_names", "solver_kernels"]

_NAMES = tuple(f for f, _ in FIELDS)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def _fold(x, axis_size, batched):
    """``(Bv, R, B)`` (or unbatched ``(R, B)``, broadcast) -> ``(R, Bv B)``."""
    if not batched:
        x = jnp.broadcast_to(x, (axis_size,) + x.shape)
    return jnp.moveaxis(x, 0, 1).reshape(x.shape[1], axis_size * x.shape[2])


def _fold_forcing(fv, axis_size, batched, members):
    """The forcing of ``axis_size x members`` folded members (``_fold``'s order): ``fv``
    ``(NY, 4)`` shared or ``(NY, 4, members)`` per member, with a leading batch axis when
    ``batched`` -> ``(NY, 4)`` when every member shares it, else ``(NY, 4, axis_size
    members)`` (the kernel's per-member forcing: sites with their own rainfall in one
    call)."""
    if not batched:
        if fv.ndim == 2:
            return fv
        fv = jnp.broadcast_to(fv, (axis_size,) + fv.shape)
    if fv.ndim == 3:  # (Bv, NY, 4): one series per batch entry, shared by its members
        fv = jnp.broadcast_to(fv[..., None], fv.shape + (members,))
    ny, nd = fv.shape[1], fv.shape[2]
    return jnp.moveaxis(fv, 0, 2).reshape(ny, nd, axis_size * members)


def _unfold(x, axis_size):
    """``(Bv B, ...)`` -> ``(Bv, B, ...)``."""
    return x.reshape((axis_size, x.shape[0] // axis_size) + x.shape[1:])


@functools.cache
def _functions(name: str, steps: int, threads: int, layout: Layout, dtype):
    """The kernel calls of one target, as a JAX function of ``(prm (NP, B), fv (NY, 4))``
    -> ``(fields (each (B, NY[, k])), finite (B,) as 0/1 in prm's dtype)``, batchable
    (``custom_vmap``) and forward-differentiable (``custom_jvp``: the tangent kernel is
    built the first time a derivative is traced)."""

    @jax.custom_batching.custom_vmap
    def primal(prm, fv):
        fields, finite = _kernel.rk4_observed(name, prm, fv, steps, threads)
        return tuple(fields[k] for k in _NAMES), finite.astype(prm.dtype)

    @primal.def_vmap
    def _primal_vmap(axis_size, in_batched, prm, fv):
        members = prm.shape[-1]
        outs, finite = primal(_fold(prm, axis_size, in_batched[0]),
                              _fold_forcing(fv, axis_size, in_batched[1], members))
        return ((tuple(_unfold(o, axis_size) for o in outs), _unfold(finite, axis_size)),
                ((True,) * len(outs), True))

    @jax.custom_batching.custom_vmap
    def tangent(prm, dprm, fv):
        jvp_name = _kernel.target(_treedef(), layout, dtype, jvp=True)
        if jvp_name is None:
            raise RuntimeError("the tangent kernel is not available: differentiate with "
                               "solver=RK4() instead")
        fields, finite = _kernel.rk4_observed(jvp_name, jnp.concatenate([prm, dprm]), fv,
                                              steps, threads, jvp=True)
        return (tuple(fields[k] for k in _NAMES), tuple(fields["d" + k] for k in _NAMES),
                finite.astype(prm.dtype))

    @tangent.def_vmap
    def _tangent_vmap(axis_size, in_batched, prm, dprm, fv):
        members = prm.shape[-1]
        outs, douts, finite = tangent(_fold(prm, axis_size, in_batched[0]),
                                      _fold(dprm, axis_size, in_batched[1]),
                                      _fold_forcing(fv, axis_size, in_batched[2], members))
        outs = tuple(_unfold(o, axis_size) for o in outs)
        douts = tuple(_unfold(o, axis_size) for o in douts)
        finite = _unfold(finite, axis_size)
        primal_batched = in_batched[0] or in_batched[2]
        if not primal_batched:
            # Only the tangents are batched (jacfwd's directions): the primal outputs are
            # the same in every copy, and unbatched as the primal function's are.
            outs = tuple(o[0] for o in outs)
            finite = jnp.min(finite, axis=0)
        return ((outs, douts, finite),
                ((primal_batched,) * len(outs), (True,) * len(douts), primal_batched))

    @jax.custom_jvp
    def outputs(prm, fv):
        return primal(prm, fv)

    def _outputs_jvp(primals, tangents):
        (prm, fv), (dprm, dfv) = primals, tangents
        if not isinstance(dfv, jax.custom_derivatives.SymbolicZero):
            raise NotImplementedError("KernelRK4 differentiates with respect to the "
                                      "parameters only: use solver=RK4() for derivatives "
                                      "with respect to the forcing")
        if isinstance(dprm, jax.custom_derivatives.SymbolicZero):
            outs, finite = primal(prm, fv)
            return (outs, finite), (tuple(jnp.zeros_like(o) for o in outs),
                                    jnp.zeros_like(finite))
        outs, douts, finite = tangent(prm, dprm, fv)
        return (outs, finite), (douts, jnp.zeros_like(finite))

    outputs.defjvp(_outputs_jvp, symbolic_zeros=True)

    return outputs


@functools.cache
def _treedef():
    """The ``Params`` treedef (leaves in ``PARAM_NAMES`` order), made on first use."""
    return jax.tree_util.tree_structure(Params(**{n: jnp.zeros(()) for n in PARAM_NAMES}))


def kernel_fields(params: Params | Float[Array, " n_params"], forcing: Forcing, *,
                  steps_per_year: int = 12, layout: Layout = Layout()
                  ) -> tuple[dict, jax.Array] | None:
    """The annual outputs of ``params`` (scalar leaves, or stacked in ``PARAM_NAMES``
    order; any batch axes through ``vmap``) from the kernel: ``(fields (each
    (n_years[, k])), finite)``, or None where the kernels are not available."""
    if isinstance(params, Params):
        dtype = np.dtype(params.dtype)
        prm = jnp.stack([jnp.asarray(x, dtype) for x in jax.tree_util.tree_leaves(params)])
    else:
        prm = jnp.asarray(params)
        dtype = np.dtype(prm.dtype)
    if jax.default_backend() != "cpu":
        return None
    name = _kernel.target(_treedef(), layout, dtype)
    if name is None:
        return None
    fn = _functions(name, int(steps_per_year), _cores(), layout, dtype)
    fv = jnp.stack(driver_series(forcing.astype(dtype)), axis=1)
    outs, finite = fn(prm[:, None], fv)
    return {k: o[0] for k, o in zip(_NAMES, outs)}, finite[0]


def kernel_names(dtype, layout: Layout = Layout()) -> list[str]:
    """Build (or load) the value and tangent kernels of ``dtype`` and return their FFI target
    names (none where the kernels are not available): what a program traced with
    ``KernelRK4`` calls (``_traces.cached`` registers them before such a program runs)."""
    if jax.default_backend() != "cpu":
        return []
    dtype = np.dtype(dtype)
    return [n for n in _kernel.targets(_treedef(), layout, dtype, (False, True)) if n]


def solver_kernels(solver: AbstractSolver | None, dtype) -> tuple:
    """The kernel registrations a program traced with ``solver`` needs (for
    ``_traces.cached``): :func:`kernel_names` of ``dtype`` for a ``KernelRK4``, else none."""
    return (functools.partial(kernel_names, np.dtype(dtype)),) \
        if isinstance(solver, KernelRK4) else ()


class KernelRK4(AbstractSolver):
    """RK4 with ``steps_per_year`` fixed steps per year, run by the CPU kernels (forward
    values and forward-mode derivatives); the XLA ``RK4`` where they are not available
    and for reverse mode (:meth:`for_gradient`)."""

    steps_per_year: int = 12

    def __check_init__(self):
        RK4(self.steps_per_year)  # the same check of steps_per_year

    def for_gradient(self) -> AbstractSolver:
        return RK4(self.steps_per_year)

    def solve_grid(self, params, forcing, layout):
        """The state grid (the kernel computes annual outputs only): the XLA path."""
        return RK4(self.steps_per_year).solve_grid(params, forcing, layout)

    def simulation(self, params: Params, forcing: Forcing, layout: Layout
                   ) -> Simulation | None:
        """The :class:`Simulation` of one parameter set from the kernel (``simulate`` calls
        this; None where the kernel is not available: ``simulate`` then runs the XLA
        path of :meth:`solve_grid`)."""
        out = kernel_fields(params, forcing, steps_per_year=self.steps_per_year,
                            layout=layout)
        if out is None:
            return None
        fields, finite = out
        status = jnp.where(finite > 0, code("successful"), code("nonfinite")).astype(jnp.int32)
        return with_forcing(fields, status, forcing.astype(params.dtype))

    def simulation_of_vector(self, x, forcing, layout):
        out = kernel_fields(x, forcing, steps_per_year=self.steps_per_year, layout=layout)
        if out is None:
            return None
        fields, finite = out
        status = jnp.where(finite > 0, code("successful"), code("nonfinite")).astype(jnp.int32)
        return with_forcing(fields, status, forcing.astype(x.dtype))
