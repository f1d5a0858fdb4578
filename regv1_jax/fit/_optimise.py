"""Optimisers as objects: Levenberg-Marquardt (forward-mode Jacobian) and Optax L-BFGS, each
with an optional Optax Adam warm-up.

An optimiser is a frozen ``eqx.Module`` (hashable: a static argument of the jitted staged
fit) whose :meth:`AbstractOptimiser.minimise` runs from one start on the unconstrained
parameter vector ``u`` and returns an :class:`OptimiseResult`; the staged fit ``vmap``s it
over starts.  Coordinates where ``mask`` is False never move.  Every loop is a
``lax.scan``/``lax.while_loop`` with a fixed trace: one compilation serves every stage.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

__all__ = ["OptimiseResult", "AbstractOptimiser", "Adam", "LevenbergMarquardt", "LBFGS",
           "spd_solve", "LM_FTOL", "MAX_FREE"]

LM_FTOL = 1e-10  # LM stops when an accepted step gains less than this share of the cost
MAX_FREE = 12  # default width of the LM Jacobian (the seed's joint stage has 12 parameters)

Residuals = Callable[[Float[Array, " n"]], Float[Array, " rows"]]
Loss = Callable[[Float[Array, " n"]], Float[Array, ""]]


class OptimiseResult(eqx.Module):
    """What one start of an optimiser ends with."""

    u: Float[Array, " n"]  # final unconstrained vector
    trace: Float[Array, " steps"]  # loss per iteration (the final one repeated after a stop)
    grad: Float[Array, " n"]  # gradient of the loss at ``u`` (J^T r for LM)
    n_iter: Int[Array, ""]  # iterations run
    # Sensitivity of the data rows to each coordinate (|column of the data Jacobian|); 1 on
    # every free coordinate for optimisers without a Jacobian.
    sensitivity: Float[Array, " n"]


class Adam(eqx.Module):
    """Optax Adam warm-up: ``steps`` iterations (0: none, nothing traced)."""

    steps: int = 0
    learning_rate: float = 0.1

    def run(self, loss: Loss, u0, mask: Bool[Array, " n"]):
        """``(u, trace)`` after ``steps`` Adam iterations on the free coordinates."""
        if self.steps == 0:
            return u0, jnp.zeros((0,), u0.dtype)
        import optax  # imported on use: the default optimiser (LM) needs none of it

        adam = optax.adam(self.learning_rate)

        def step(carry, _):
            u, state = carry
            val, g = jax.value_and_grad(loss)(u)
            g = jnp.where(mask & jnp.isfinite(g), g, 0.0)
            upd, state = adam.update(g, state, u)
            new_u = optax.apply_updates(u, upd)
            ok = jnp.isfinite(val) & jnp.all(jnp.isfinite(new_u))
            return (jnp.where(ok, new_u, u), state), val

        (u, _), trace = jax.lax.scan(step, (u0, adam.init(u0)), None, length=self.steps)
        return u, trace


class AbstractOptimiser(eqx.Module):
    """Minimises ``0.5 |residuals(u)|^2`` over the coordinates of ``u`` where ``mask``."""

    warmup: eqx.AbstractVar[Adam]

    @property
    @abc.abstractmethod
    def n_trace(self) -> int:
        """Length of :attr:`OptimiseResult.trace`."""

    @abc.abstractmethod
    def minimise(self, residuals: Residuals, loss: Loss, u0: Float[Array, " n"],
                 mask: Bool[Array, " n"], n_data: int) -> OptimiseResult:
        """From ``u0``: ``residuals`` is differentiated in forward mode, ``loss`` (the same
        ``0.5 |r|^2``) in reverse mode; the first ``n_data`` residual rows are data rows
        (their Jacobian columns give the sensitivity)."""


class _LMState(eqx.Module):
    it: Int[Array, ""]  # 0: the start is evaluated; k >= 1: the k-th trial point
    v: Float[Array, " k"]  # accepted point (free coordinates)
    trial: Float[Array, " k"]
    J: Float[Array, "rows k"]
    r: Float[Array, " rows"]
    cost: Float[Array, ""]
    lam: Float[Array, ""]  # damping
    done: Bool[Array, ""]
    trace: Float[Array, " steps"]


class LevenbergMarquardt(AbstractOptimiser):
    """Levenberg-Marquardt with Marquardt scaling and a forward-mode Jacobian
    (``jax.jacfwd``: ``width`` tangent solves in one pass) on at most ``width`` free
    coordinates; at most ``max_steps`` trial points in a ``lax.while_loop`` that stops once
    an accepted step gains less than ``ftol`` of the cost (under ``vmap``: once every start
    has)."""

    max_steps: int = 40
    ftol: float = LM_FTOL
    width: int = MAX_FREE
    warmup: Adam = Adam()

    @property
    def n_trace(self) -> int:
        return self.warmup.steps + self.max_steps

    def selection(self, mask: Bool[Array, " n"]) -> Float[Array, "n width"]:
        """The 0/1 matrix ``S`` of the free coordinates (``u = u0 + S v``), padded to
        ``width`` columns."""
        idx = jnp.cumsum(mask) - 1
        return jnp.where(mask[:, None] & (idx[:, None] == jnp.arange(self.width)[None, :]),
                         1.0, 0.0)

    def minimise(self, residuals, loss, u0, mask, n_data):
        u, t_adam = self.warmup.run(loss, u0, mask)
        res = self.solve(residuals, u, self.selection(mask).astype(u0.dtype), n_data)
        return OptimiseResult(res.u, jnp.concatenate([t_adam, res.trace]), res.grad,
                              self.warmup.steps + res.n_iter, res.sensitivity)

    def solve(self, residuals: Residuals, u0: Float[Array, " n"],
              S: Float[Array, "n k"], n_data: int) -> OptimiseResult:
        """LM on ``u = u0 + S v`` (``S``: the free columns).  Each iteration evaluates the
        residuals and their Jacobian at one point (the start, then each trial) and accepts
        a trial only if the cost falls (else the damping grows); one Jacobian evaluation
        site in the loop body, so the solve is traced and compiled once."""
        K = S.shape[1]

        def jr(v):
            def f(w):
                r = residuals(u0 + S @ w)
                return r, r

            return jax.jacfwd(f, has_aux=True)(v)

        def cost_of(r):
            c = 0.5 * jnp.sum(r**2)
            return jnp.where(jnp.isfinite(c), c, jnp.inf)

        v0 = jnp.zeros((K,), u0.dtype)
        rows = jax.eval_shape(lambda v: residuals(u0 + S @ v), v0).shape[0]
        n_max = self.max_steps

        def cond(s: _LMState):
            return (s.it <= n_max) & ~s.done

        def body(s: _LMState) -> _LMState:
            J_new, r_new = jr(s.trial)
            c_new = cost_of(r_new)
            first = s.it == 0
            ok = first | ((c_new < s.cost) & jnp.all(jnp.isfinite(s.trial)))
            # Stop (per start) once an accepted step gains less than ftol of the cost, or
            # the damping has grown so large that no step is taken.
            done = ~first & ((ok & (s.cost - c_new <= self.ftol * s.cost)) | (s.lam >= 1e10))
            v = jnp.where(ok, s.trial, s.v)
            J = jnp.where(ok, J_new, s.J)
            r = jnp.where(ok, r_new, s.r)
            cost = jnp.where(ok, c_new, s.cost)
            A = J.T @ J
            d = jnp.diag(A)
            lam0 = 1e-3 * jnp.max(d)
            lam = jnp.where(first, jnp.where(jnp.isfinite(lam0) & (lam0 > 0), lam0, 1.0),
                            jnp.where(ok, jnp.maximum(s.lam / 3.0, 1e-12),
                                      jnp.minimum(s.lam * 4.0, 1e12)))
            d = jnp.where(d > 0, d, 1.0)
            trial = v + spd_solve(A + lam * jnp.diag(d), -(J.T @ r))
            trace = jnp.where(first, s.trace, s.trace.at[s.it - 1].set(cost))
            return _LMState(s.it + 1, v, trial, J, r, cost, lam, done, trace)

        dt = u0.dtype
        init = _LMState(jnp.asarray(0), v0, v0, jnp.zeros((rows, K), dt),
                        jnp.zeros((rows,), dt), jnp.asarray(jnp.inf, dt),
                        jnp.asarray(1.0, dt), jnp.asarray(False), jnp.full((n_max,), jnp.nan, dt))
        s = jax.lax.while_loop(cond, body, init)
        it = s.it - 1
        # Iterations not run (converged early) repeat the final cost.
        trace = jnp.where(jnp.arange(n_max) >= it, s.cost, s.trace)
        sens = S @ jnp.sqrt(jnp.sum(s.J[:n_data] ** 2, axis=0))
        return OptimiseResult(u0 + S @ s.v, trace, S @ (s.J.T @ s.r), it, sens)


class LBFGS(AbstractOptimiser):
    """Optax L-BFGS with a backtracking line search, ``steps`` iterations after the Adam
    warm-up, in one ``lax.scan``: the loss and gradient are computed once per iteration
    outside a ``lax.cond`` on the (unbatched) iteration index, so the gradient of the solve
    is traced once."""

    steps: int = 60
    warmup: Adam = Adam()

    @property
    def n_trace(self) -> int:
        return self.warmup.steps + self.steps + 1

    def minimise(self, residuals, loss, u0, mask, n_data):
        import optax

        adam = optax.adam(self.warmup.learning_rate)
        lbfgs = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(
            max_backtracking_steps=15, store_grad=True))

        def vg(u):
            val, g = jax.value_and_grad(loss)(u)
            return val, jnp.where(mask & jnp.isfinite(g), g, 0.0)

        def adam_branch(u, val, g, a_state, l_state):
            upd, a_state = adam.update(g, a_state, u)
            return optax.apply_updates(u, upd), a_state, l_state

        def lbfgs_branch(u, val, g, a_state, l_state):
            upd, new_state = lbfgs.update(g, l_state, u, value=val, grad=g, value_fn=loss)
            new_u = jnp.where(mask, optax.apply_updates(u, upd), u)
            good = jnp.isfinite(val) & jnp.all(jnp.isfinite(new_u))
            u = jnp.where(good, new_u, u)
            l_state = jax.tree_util.tree_map(lambda a, b: jnp.where(good, a, b), new_state,
                                             l_state)
            return u, a_state, l_state

        def step(carry, i):
            u, a_state, l_state = carry
            val, g = vg(u)
            out = jax.lax.cond(i < self.warmup.steps, adam_branch, lbfgs_branch,
                               u, val, g, a_state, l_state)
            return out, val

        n = self.warmup.steps + self.steps
        (u, _, _), trace = jax.lax.scan(step, (u0, adam.init(u0), lbfgs.init(u0)),
                                        jnp.arange(n))
        val, g = vg(u)
        # No Jacobian here: every free coordinate counts as sensitive.
        return OptimiseResult(u, jnp.concatenate([trace, val[None]]), g, jnp.asarray(n),
                              jnp.where(mask, 1.0, 0.0).astype(u0.dtype))


def spd_solve(M: Float[Array, "k k"], b: Float[Array, " k"]) -> Float[Array, " k"]:
    """``M^{-1} b`` for a small symmetric positive-definite ``M`` (K x K): a Cholesky
    factorisation and two triangular solves in jnp, each a ``fori_loop`` over K (a small
    trace: the staged fit compiles once for every stage and start).

    Not ``jnp.linalg.solve``: under ``vmap`` on CPU that is a LAPACK custom call whose
    batch loop runs on XLA's intra-op thread pool, and with several host devices running
    batched fits at once that pool can wedge (a deadlock seen in ``bench_bootstrap``,
    every thread parked in ``ParallelBatchMap``).  Elementwise jnp has no such call and
    vectorises over the batch.  A non-positive pivot gives NaN (the caller rejects the
    step)."""
    K = M.shape[0]
    idx = jnp.arange(K)

    def column(j, L):  # columns >= j of L are still zero, so L @ L[j] sums k < j only
        s = M[:, j] - L @ L[j]
        piv = jnp.sqrt(jnp.where(s[j] > 0, s[j], jnp.nan))
        return L.at[:, j].set(jnp.where(idx >= j, s / piv, 0.0))

    L = jax.lax.fori_loop(0, K, column, jnp.zeros_like(M))
    diag = jnp.diagonal(L)
    y = jax.lax.fori_loop(0, K, lambda i, y: y.at[i].set((b[i] - L[i] @ y) / diag[i]),
                          jnp.zeros_like(b))
    return jax.lax.fori_loop(
        0, K, lambda k, x: x.at[K - 1 - k].set((y[K - 1 - k] - L[:, K - 1 - k] @ x)
                                               / diag[K - 1 - k]), jnp.zeros_like(b))
