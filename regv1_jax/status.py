"""The one status vocabulary of the package: ``RESULTS``, an ``eqx.Enumeration``.

Every outcome code — of a solve (``Simulation.status``), a calibration stage
(``FitResult.status``), a profile point, a bootstrap replicate and a batched evaluation —
is an entry of ``RESULTS``.  Under ``jit``/``vmap`` the codes travel as ``int32`` arrays (one
per member, so that a batch keeps going when one member fails); :func:`code` gives the
integer of an entry, :func:`name` and :func:`message` turn an integer back into words (the
reports' words come from here), and :func:`item` makes an ``EnumerationItem`` of an array of
codes for ``RESULTS[item]`` or ``item.error_if``.

The integers are the order of definition below and are written into output files
(``bootstrap_replicates.csv``'s ``status`` and ``stage_code:*`` columns, ``sobol.json``'s
failure counts); each file's JSON companion carries their meaning.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["RESULTS", "code", "name", "message", "item", "CODES", "MESSAGES"]


# name -> message, in code order (0, 1, ...).
_ENTRIES: dict[str, str] = {
    "successful": "ok",
    "not_converged": "stopped before the convergence test passed",
    "at_bound": "a fitted parameter ended at its physical bound (no convergence claimed: the "
                "gradient of the saturated transform is zero there)",
    "skipped": "not run: no data for its variables, or too few constraints without a prior",
    "failed": "every start diverged (failed solve or non-finite loss); parameters left at "
              "their incoming values",
    "nonfinite": "the solution became non-finite (NaN or inf); the parameter set is outside "
                 "the model's valid region",
    "max_steps_reached": "maximum number of solver steps reached (raise max_steps, or use "
                         "method='kvaerno5' for a stiff parameter set)",
    "solver_failed": "the solver failed (step size collapsed or the implicit solve diverged)",
    "no_step": "no optimiser step accepted: every fitted parameter off its bounds stayed at "
               "the point estimate although the weights changed (seen when a parameter sits "
               "at a physical bound; such a stage reports at_bound, not its convergence)",
    "newly_skipped": "a stage that ran in the point fit was skipped (the resample dropped its "
                     "data)",
    "qoi_nonfinite": "the quantity of interest is non-finite although the solve succeeded",
}

RESULTS = type(eqx.Enumeration)("RESULTS", (eqx.Enumeration,), {  # type: ignore[misc]
    "__module__": __name__,
    "__doc__": "Outcome of a solve, a stage, a profile point, a replicate or an evaluation "
               "(an ``eqx.Enumeration``; entries and messages in ``regv1_jax.status``).",
    **_ENTRIES})


def _int(entry) -> int:
    return int(jax.tree_util.tree_leaves(entry)[0])


# name -> integer code, and integer code -> message.
CODES: dict[str, int] = {n: _int(getattr(RESULTS, n)) for n in _ENTRIES}
_NAMES: dict[int, str] = {v: k for k, v in CODES.items()}
MESSAGES: dict[int, str] = {CODES[n]: RESULTS[getattr(RESULTS, n)] for n in _ENTRIES}
assert list(CODES.values()) == list(range(len(_ENTRIES)))


def code(entry: str) -> int:
    """The integer code of the entry called ``entry`` (``code("at_bound") == 2``)."""
    try:
        return CODES[entry]
    except KeyError:
        raise ValueError(f"unknown status {entry!r}; known: {list(CODES)}") from None


def name(value) -> str:
    """The entry name of an integer code (``name(0) == "successful"``)."""
    return _NAMES[int(value)]


def message(value) -> str:
    """The message of an integer code, in words."""
    return MESSAGES[int(value)]


def item(values):
    """An enumeration item of ``RESULTS`` holding the codes ``values`` (any shape): for
    ``RESULTS[item(sim.status)]`` (the messages) and ``item(...).error_if``."""
    treedef = jax.tree_util.tree_structure(RESULTS.successful)
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(values, jnp.int32)])
