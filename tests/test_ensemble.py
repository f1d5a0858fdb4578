"""The forward ensemble (``simulate_ensemble``) against ``simulate(method="rk4")``.

These tests are what makes a change of the model equations land in the fast paths: the
generated kernel and the batch-last XLA path must give ``simulate(rk4)``'s numbers member by
member, whatever ``rate_terms`` says.
"""

import contextlib
import functools
import gc
import re
import sys
import textwrap
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import loess, run_on_cpu_devices, yanhe_forcing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _hlo  # noqa: E402  (the HLO loop counter, a benchmark tool)

import regv1_jax as r
from regv1_jax.model import THETA_BISECTIONS, THETA_BISECTIONS_F32, Layout
from regv1_jax.solve import NONFINITE, OK, bucket_size
from regv1_jax.solve import kernel as _kernel

OUTPUTS = ("V", "SOM", "SOM_layers", "theta", "runoff", "ET", "drainage", "water_yield",
           "erosion", "storage_change", "rainfall")
ROOT = Path(__file__).resolve().parents[1]


def _has_kernel(dtype):
    _, p = loess(dtype)
    return _kernel.available(p, Layout(), dtype)


def _draws(n, dtype, seed=5, bad=None):
    space, _ = loess()
    d = space.sample_prior(jax.random.PRNGKey(seed), n, dtype=dtype)
    if bad is not None:
        d = eqx.tree_at(lambda q: q.V0, d, d.V0.at[bad].set(jnp.nan))
    return d


@functools.cache
def _case(n, dtype_name, seed, bad=None):
    """Draws and the reference ``vmap(simulate(rk4))`` solves (computed once per case)."""
    draws = _draws(n, jnp.dtype(dtype_name), seed, bad)
    f = yanhe_forcing()
    return draws, f, jax.jit(jax.vmap(lambda q: r.simulate(q, f, method="rk4")))(draws)


def _assert_agree(ens, ref, rtol, atol_rel):
    for k in OUTPUTS:
        a, b = np.asarray(getattr(ens, k)), np.asarray(getattr(ref, k))
        assert a.shape == b.shape, k
        scale = np.nanmax(np.abs(b))
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol_rel * scale, err_msg=k)
    np.testing.assert_array_equal(ens.years, ref.years)
    np.testing.assert_array_equal(ens.status, ref.status)


# (options, why): every path of the default dispatch, forced.
PATHS = [
    (dict(), "default (kernel on CPU when it builds)"),
    (dict(kernel=False), "XLA, whole batch (77 < chunk)"),
    (dict(kernel=False, chunk=8), "XLA, chunks of 8"),
]


@pytest.mark.parametrize("opts", [p[0] for p in PATHS], ids=[p[1] for p in PATHS])
def test_ensemble_equals_simulate_rk4_float64(opts):
    # 77 members: padded to a bucket, crosses kernel blocks and chunks.
    draws, f, ref = _case(77, "float64", 5, bad=11)
    ens = r.simulate_ensemble(draws, f, **opts)
    assert ens.V.dtype == jnp.float64
    assert list(np.flatnonzero(np.asarray(ens.status) != OK)) == [11]
    assert int(ens.status[11]) == NONFINITE and np.all(np.isnan(np.asarray(ens.V[11])))
    _assert_agree(ens, ref, rtol=1e-12, atol_rel=1e-12)


@pytest.mark.parametrize("opts", [dict(), dict(kernel=False)],
                         ids=["default", "xla-small-vmap"])
def test_ensemble_equals_simulate_rk4_float32(opts):
    draws, f, ref = _case(40, "float32", 3)  # 40 <= SMALL_BATCH: the vmapped XLA path
    ens = r.simulate_ensemble(draws, f, **opts)
    assert ens.V.dtype == jnp.float32
    assert np.all(np.asarray(ens.status) == OK)
    _assert_agree(ens, ref, rtol=1e-5, atol_rel=1e-5)


def test_kernel_is_the_cpu_default_and_one_custom_call():
    if not _has_kernel(jnp.float64):
        pytest.skip("no C++ compiler: the XLA path is the default")
    draws = _draws(64, jnp.float64)
    f = yanhe_forcing().astype(jnp.float64)
    target = _kernel.target(draws, Layout(), jnp.float64)
    hlo = r.solve.ensemble_hlo(draws, f, steps_per_year=12, kernel=True)
    # The whole time loop is one call of the generated kernel; no XLA loop over time steps
    # (the only loop left is the bisection of the initial soil moisture).
    assert hlo.count("custom_call_target=\"" + target) == 1
    trips = set(re.findall(r'"known_trip_count":\{"n":"(\d+)"\}', hlo))
    assert trips <= {str(THETA_BISECTIONS), str(THETA_BISECTIONS_F32)}


def test_xla_path_fuses_each_rk4_step():
    """The batch-last XLA path: count its loop fusions per right-hand-side evaluation.

    XLA:CPU has no multi-output loop fusion, so one evaluation is ~24 loop kernels (the
    benchmark reports the figure); this guards against a regression to the ~100 of the
    vmapped ``(B, D)`` layout.
    """
    draws = _draws(256, jnp.float32)
    f = yanhe_forcing().astype(jnp.float32)
    hlo = r.solve.ensemble_hlo(draws, f, steps_per_year=12, kernel=False)
    per_eval = _hlo.loop_body_fusions(hlo) / (4 * 12)
    assert 1 <= per_eval <= 40, per_eval


def test_batch_sizes_in_one_bucket_compile_once():
    assert bucket_size(1000) == bucket_size(1020) == 1024
    assert bucket_size(1) == 1 and bucket_size(5) == 5
    assert bucket_size(77, 32) == 96
    for n in (1, 7, 100, 999, 12345, 10**6):
        b = bucket_size(n)
        assert n <= b <= 1.125 * n + 1
    f = yanhe_forcing()
    a_draws, b_draws = _draws(1000, jnp.float64, seed=1), _draws(1020, jnp.float64, seed=2)
    for kw in (dict(), dict(kernel=False)):
        a = r.simulate_ensemble(a_draws, f, **kw)  # compiles the bucket of 1024
        with _compiles() as compiled:
            b = r.simulate_ensemble(b_draws, f, **kw)
        # the kernel path pads on the host: nothing compiles; the XLA path compiles only
        # its small pad and slice for the new size (~0.1 s each), not the solve
        assert len(compiled) == (0 if not kw and _has_kernel(jnp.float64) else 2), compiled
        assert a.V.shape == (1000, 21) and b.V.shape == (1020, 21)
        assert np.all(np.asarray(b.status) == OK)


def test_padded_results_outlive_the_kernel_buffers():
    """On the kernel path the results of a padded batch are views of the kernel's padded
    arrays (no copy); they must stay valid after those arrays are dropped and memory is
    reused."""
    f = yanhe_forcing()
    d = _draws(1020, jnp.float64, seed=3)  # bucket 1024
    a = r.simulate_ensemble(d, f)
    want = {k: np.array(getattr(a, k)) for k in ("V", "runoff", "SOM_layers", "status")}
    gc.collect()
    churn = [r.simulate_ensemble(_draws(1020, jnp.float64, seed=4), f) for _ in range(3)]
    churn += [jnp.full((1024, 21), float(i)) for i in range(50)]
    gc.collect()
    for k, v in want.items():
        np.testing.assert_array_equal(np.asarray(getattr(a, k)), v, err_msg=k)
    assert a.V.shape == (1020, 21) and len(churn) == 53


def test_ensemble_under_jit_equals_eager():
    """Inside a caller's ``jit`` the padding is done in the graph (no host round trip)."""
    draws, f, _ = _case(77, "float64", 5, bad=11)  # padded to 80
    eager = r.simulate_ensemble(draws, f)
    traced = jax.jit(lambda q: r.simulate_ensemble(q, f))(draws)
    for k in ("V", "runoff", "SOM_layers", "status"):
        np.testing.assert_array_equal(np.asarray(getattr(traced, k)),
                                      np.asarray(getattr(eager, k)), err_msg=k)


@contextlib.contextmanager
def _compiles():
    """The names of the XLA backend compilations within the block."""
    names = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(kwargs.get("fun_name", event))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_bad_batches_raise():
    _, p = loess()
    f = yanhe_forcing()
    with pytest.raises(ValueError, match="one batch axis"):
        r.simulate_ensemble(p, f)
    with pytest.raises(ValueError, match="steps_per_year"):
        r.simulate_ensemble(_draws(4, jnp.float64), f, steps_per_year=7)


SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    import regv1_jax as r
    assert len(jax.devices()) == 4, jax.devices()
    space = r.load_param_space("LoessPlateau")
    f = r.make_forcing(1995, 2015, rainfall=450.0, intensity=1.0,
                       psi_plant=r.grain_for_green(1995, 2015))
    # 4 * 1024 + 3: padded at the end of the batch; 4 * 1100: each device's 1100 members
    # padded to 1152 on that device.
    for n in (4 * 1024 + 3, 4 * 1100):
        d = space.sample_prior(jax.random.PRNGKey(n), n, dtype=jnp.float64)
        for kw in (dict(), dict(kernel=False)):
            one = r.simulate_ensemble(d, f, devices=jax.devices()[:1], **kw)
            four = r.simulate_ensemble(d, f, **kw)
            assert four.V.shape == (n, 21)
            for k in ("V", "SOM", "theta", "runoff", "erosion", "drainage", "status"):
                np.testing.assert_allclose(getattr(four, k), getattr(one, k), rtol=1e-13,
                                           atol=1e-13, err_msg=k)
    print("SHARDED OK")
""")


def test_sharded_over_four_cpu_devices_equals_unsharded():
    run_on_cpu_devices(SHARDED)


def test_kernel_hoists_parameter_and_driver_terms():
    """The generated kernel evaluates only state-dependent equations per evaluation: the
    parameter-only and driver-only terms of ``rate_terms`` run once per member / year."""
    _, p = loess(jnp.float32)
    eqs = _kernel.rhs_source(jax.tree_util.tree_structure(p), Layout(), jnp.float32)[
        "equations"]
    total = eqs["per_member"] + eqs["per_year"] + eqs["per_evaluation"]
    assert eqs["per_member"] >= 10 and eqs["per_year"] >= 3, eqs
    assert eqs["per_evaluation"] <= 0.85 * total, eqs
