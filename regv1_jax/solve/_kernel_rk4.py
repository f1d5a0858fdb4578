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

    def _primal_batched(axis_size, prm_batched, prm, fv):
        outs, finite = primal(_fold(prm, axis_size, prm_batched), fv)
        return tuple(_unfold(o, axis_size) for o in outs), _unfold(finite, axis_size)

    @primal.def_vmap
    def _primal_vmap(axis_size, in_batched, prm, fv):
        if in_batched[1]:
            # A batched forcing: the kernel when every copy is the same (a batched stage
            # skip flag broadcasts the forcing of a bootstrap), else the XLA RK4 per member
            # (the same numbers).
            def xla():
                return jax.vmap(lambda p, f: _xla_outputs(p, f, steps, layout),
                                in_axes=(0 if in_batched[0] else None, 0))(prm, fv)

            outs, finite = jax.lax.cond(
                jnp.all(fv == fv[:1]),
                lambda: _primal_batched(axis_size, in_batched[0], prm, fv[0]), xla)
        else:
            outs, finite = _primal_batched(axis_size, in_batched[0], prm, fv)
        return (outs, finite), ((True,) * len(outs), True)

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
        if in_batched[2]:
            # As for the values: the kernel when every copy of the forcing is the same,
            # else forward mode through the XLA RK4 per member.
            def one(p, dp, f):
                (outs, finite), (douts, _) = jax.jvp(
                    lambda q: _xla_outputs(q, f, steps, layout), (p,), (dp,))
                return outs, douts, finite

            def xla():
                return jax.vmap(one, in_axes=tuple(0 if b else None for b in in_batched))(
                    prm, dprm, fv)

            def kern():
                return _tangent_vmap(axis_size, (True, True, False),
                                     prm if in_batched[0] else jnp.broadcast_to(
                                         prm, (axis_size,) + prm.shape),
                                     dprm if in_batched[1] else jnp.broadcast_to(
                                         dprm, (axis_size,) + dprm.shape), fv[0])[0]

            out = jax.lax.cond(jnp.all(fv == fv[:1]), kern, xla)
            return out, ((True,) * len(out[0]), (True,) * len(out[1]), True)
        outs, douts, finite = tangent(_fold(prm, axis_size, in_batched[0]),
                                      _fold(dprm, axis_size, in_batched[1]), fv)
        outs = tuple(_unfold(o, axis_size) for o in outs)
        douts = tuple(_unfold(o, axis_size) for o in douts)
        finite = _unfold(finite, axis_size)
        if not in_batched[0]:
            # Only the tangents are batched (jacfwd's directions): the primal outputs are
            # the same in every copy, and unbatched as the primal function's are.
            outs = tuple(o[0] for o in outs)
            finite = jnp.min(finite, axis=0)
        return ((outs, douts, finite),
                ((in_batched[0],) * len(outs), (True,) * len(douts), in_batched[0]))

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


def _xla_outputs(prm, fv, steps: int, layout: Layout):
    """What the kernel computes, by the XLA ``RK4``: ``prm`` ``(NP, B)``, ``fv`` ``(NY, 4)``
    (the driver series) -> ``(fields, finite)`` (the fallback for a batched forcing)."""
    from ._simulate import simulate

    forcing = Forcing(fv[:, 0], fv[:, 1], fv[:, 2], fv[:, 3], 0)

    def one(col):
        p = jax.tree_util.tree_unflatten(_treedef(), list(col))
        sim = simulate(p, forcing, solver=RK4(steps), n_lag=layout.n_lag)
        return (tuple(getattr(sim, k) for k in _NAMES),
                (sim.status == code("successful")).astype(prm.dtype))

    return jax.vmap(one, in_axes=1)(prm)


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
