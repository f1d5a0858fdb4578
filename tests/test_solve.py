import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import loess, tree_allclose, yanhe_forcing

import regv1_jax as r
from regv1_jax.solve import MAX_STEPS, NONFINITE, OK, simulate_trace_count

OUTPUTS = ("V", "SOM", "SOM_layers", "theta", "runoff", "ET", "drainage", "water_yield",
           "erosion", "storage_change")


def test_annual_water_balance_closes():
    _, p = loess()
    f = r.make_forcing(1995, 2015, rainfall=np.linspace(300, 650, 21), intensity=1.2,
                       psi_plant=r.grain_for_green(1995, 2015),
                       psi_eng=r.ramp(1995, 2015, 2000, 2010, 0.0, 0.3))
    sim = r.simulate(p, f, rtol=1e-11, atol=1e-11)
    assert int(sim.status) == OK
    np.testing.assert_allclose(sim.water_balance_residual(), 0.0, atol=1e-6)
    np.testing.assert_allclose(sim.rainfall, np.linspace(300, 650, 21))
    np.testing.assert_allclose(sim.water_yield, sim.runoff + sim.drainage)
    # rk4 path closes the balance too (the integrals and theta share one scheme).
    sim4 = r.simulate(p, f, method="rk4", steps_per_year=24)
    np.testing.assert_allclose(sim4.water_balance_residual(), 0.0, atol=1e-6)


@pytest.mark.parametrize("method", ["tsit5", "rk4"])
def test_vmap_over_64_draws_equals_a_loop(method):
    space, _ = loess()
    f = yanhe_forcing()
    draws = space.sample_prior(jax.random.PRNGKey(0), 64, dtype=jnp.float64)
    batched = jax.vmap(lambda q: r.simulate(q, f, method=method))(draws)
    for i in range(0, 64, 9):
        one = r.simulate(jax.tree_util.tree_map(lambda x: x[i], draws), f, method=method)
        for k in OUTPUTS:
            np.testing.assert_allclose(getattr(batched, k)[i], getattr(one, k), rtol=1e-9,
                                       atol=1e-12, err_msg=k)
    assert np.all(np.asarray(batched.status) == OK)


def _loss(p, f, **kw):
    sim = r.simulate(p, f, **kw)
    return (jnp.sum(sim.runoff) / 100 + jnp.sum(sim.V) + jnp.sum(sim.SOM)
            + jnp.sum(sim.erosion) / 100)


@pytest.mark.parametrize("adjoint", ["checkpoint", "backsolve"])
def test_gradients_agree_with_central_differences(adjoint):
    _, p = loess()
    f = yanhe_forcing(end=2005)
    kw = dict(adjoint=adjoint, rtol=1e-10, atol=1e-10)
    grad = jax.grad(_loss)(p, f, **kw)
    for name in ("r_V", "lambda1", "lambda2", "eta1", "a1", "a2", "tau_VS", "c_R", "V0"):
        x = float(getattr(p, name))
        h = 1e-5 * max(abs(x), 1e-3)
        fp = _loss(p.replace(**{name: x + h}), f, **kw)
        fm = _loss(p.replace(**{name: x - h}), f, **kw)
        fd = (fp - fm) / (2 * h)
        np.testing.assert_allclose(getattr(grad, name), fd, rtol=2e-4, atol=1e-7, err_msg=name)


def test_gradients_agree_across_adjoints_and_rk4():
    _, p = loess()
    f = yanhe_forcing(end=2005)
    # the settings of the central-difference test: its compiled gradients serve here
    g1 = jax.grad(_loss)(p, f, adjoint="checkpoint", rtol=1e-10, atol=1e-10)
    g2 = jax.grad(_loss)(p, f, adjoint="backsolve", rtol=1e-10, atol=1e-10)
    g3 = jax.grad(_loss)(p, f, method="rk4", steps_per_year=48)
    assert tree_allclose(g1, g2, rtol=1e-5, atol=1e-9)
    assert tree_allclose(g1, g3, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("method", ["tsit5", "rk4"])
def test_float32_runs_and_agrees_with_float64(method):
    _, p = loess()
    f = yanhe_forcing()
    s64 = r.simulate(p, f, method=method)
    s32 = r.simulate(p.astype(jnp.float32), f, method=method)
    assert s32.V.dtype == jnp.float32
    assert int(s32.status) == OK
    for k in OUTPUTS:
        # Storage change is a small difference of large stores: judge it on the flux scale.
        scale = np.max(np.abs(s64.rainfall if k == "storage_change" else getattr(s64, k)))
        np.testing.assert_allclose(getattr(s32, k), getattr(s64, k), rtol=2e-4,
                                   atol=5e-5 * scale, err_msg=k)


def test_grain_for_green_raises_cover_and_lowers_runoff():
    _, p = loess()
    f = yanhe_forcing(1995, 2010)
    sim = r.simulate(p, f)
    V, Q = np.asarray(sim.V), np.asarray(sim.runoff)
    assert V[-1] > V[0] + 0.15
    assert np.all(np.diff(V) > 0)
    assert Q[-1] < 0.8 * Q[0]
    # Same rainfall, no planting: less cover and more runoff in 2010.
    off = r.simulate(p, yanhe_forcing(1995, 2010, planting_start=None))
    assert float(off.V[-1]) < V[-1] and float(off.runoff[-1]) > Q[-1]


def test_bistable_set_falls_to_degraded_state_without_planting():
    # The documented bistable set (data/parameter_sets/loess_bistable.json): from the 1995
    # state, below V_crit, cover and SOM decline towards bare soil without planting; started
    # restored, it stays restored.  Two stable states under one climate.
    space = r.load_param_space("LoessPlateau")
    bistable = space.override(r.data_path("parameter_sets/loess_bistable.json"))
    f = r.make_forcing(1995, 2194, rainfall=400.0, psi_plant=0.0)
    low = r.simulate(bistable.replace(V0=0.28, SOM0=0.9), f)
    V = np.asarray(low.V)
    v_crit = float(r.equilibria(bistable, r.Climate(400.0)).V_crit)
    assert V.max() < v_crit  # never crosses the saddle
    assert np.all(np.diff(V[100:]) < 0) and V[-1] < 0.15 and float(low.SOM[-1]) < 0.45
    high = r.simulate(bistable.replace(V0=0.6, SOM0=1.6), f)
    assert float(high.V[-1]) > 0.55


def test_failed_solves_are_reported_not_returned():
    space, p = loess()
    f = yanhe_forcing()
    sim = r.simulate(p, f, max_steps=4)
    assert int(sim.status) == MAX_STEPS and not bool(sim.ok)
    assert np.all(np.isnan(sim.V)) and np.all(np.isnan(sim.runoff))
    bad = p.replace(V0=jnp.nan)
    for method in ("tsit5", "rk4"):
        s = r.simulate(bad, f, method=method)
        assert int(s.status) != OK and np.all(np.isnan(s.runoff)), method
    # Per sample under vmap: one bad draw does not spoil the others.
    draws = space.sample_prior(jax.random.PRNGKey(1), 4, dtype=jnp.float64)
    draws = eqx.tree_at(lambda q: q.V0, draws, draws.V0.at[2].set(jnp.nan))
    batch = jax.vmap(lambda q: r.simulate(q, f, method="rk4"))(draws)
    assert list(np.asarray(batch.status)) == [OK, OK, NONFINITE, OK]
    V = np.asarray(batch.V)
    assert np.all(np.isfinite(V[[0, 1, 3]])) and np.all(np.isnan(V[2]))
    assert "max_steps" in r.STATUS_MESSAGES[MAX_STEPS]


def test_one_trace_per_shape():
    _, p = loess()
    f = yanhe_forcing()

    @eqx.debug.assert_max_traces(max_traces=1)
    def run(q):
        return r.simulate(q, f, method="rk4").runoff

    run_jit = jax.jit(run)
    run_jit(p)
    run_jit(p.replace(r_V=0.1))


def test_a_spelled_out_default_is_the_same_compiled_simulation():
    _, p = loess()
    f = yanhe_forcing(1995, 1997)  # no other test simulates these years: the rk4 trace is new
    sim = r.simulate(p, f)
    n = simulate_trace_count()
    same = r.simulate(p, f, method="tsit5", adjoint="checkpoint", max_steps=16_384)
    assert simulate_trace_count() == n
    assert tree_allclose(sim, same, rtol=0, atol=0)
    r.simulate(p, f, method="rk4")
    assert simulate_trace_count() == n + 1  # another setting is another trace


def test_bad_forcing_and_options_raise():
    with pytest.raises(ValueError, match="end year 1990 is before start year 1995"):
        r.make_forcing(1995, 1990, rainfall=400.0)
    with pytest.raises(ValueError, match="'rainfall' must be >= 0"):
        r.make_forcing(1995, 1996, rainfall=-1.0)
    with pytest.raises(ValueError, match="'psi_plant' must lie in"):
        r.make_forcing(1995, 1996, rainfall=400.0, psi_plant=2.0)
    with pytest.raises(ValueError, match="expected a scalar, a year->value mapping or 2"):
        r.make_forcing(1995, 1996, rainfall=[400.0, 300.0, 200.0])
    with pytest.raises(ValueError, match=r"no value for years \[1996\]"):
        r.make_forcing(1995, 1996, rainfall={1995: 400.0})
    f = r.make_forcing(1995, 1996, rainfall={1995: 400.0}, rainfall_fill=420.0)
    np.testing.assert_allclose(f.rainfall, [400.0, 420.0])
    _, p = loess()
    with pytest.raises(ValueError, match="unknown method 'euler'"):
        r.simulate(p, f, method="euler")
    with pytest.raises(ValueError, match="unknown adjoint"):
        r.simulate(p, f, adjoint="sideways")
    with pytest.raises(ValueError, match="steps_per_year must be an even int"):
        r.simulate(p, f, method="rk4", steps_per_year=5)


def test_kvaerno5_and_dopri8_agree_with_tsit5():
    _, p = loess()
    f = yanhe_forcing()
    ref = r.simulate(p, f, rtol=1e-10, atol=1e-10)
    for method in ("kvaerno5", "dopri8"):
        s = r.simulate(p, f, method=method, rtol=1e-8, atol=1e-8)
        for k in OUTPUTS:
            np.testing.assert_allclose(getattr(s, k), getattr(ref, k), rtol=1e-5, atol=1e-7,
                                       err_msg=f"{method} {k}")


def test_ensemble_path_equals_vmap_of_rk4_with_chunks_and_a_bad_member():
    space, _ = loess()
    f = yanhe_forcing()
    draws = space.sample_prior(jax.random.PRNGKey(5), 37, dtype=jnp.float64)
    draws = eqx.tree_at(lambda q: q.V0, draws, draws.V0.at[11].set(jnp.nan))
    ref = jax.vmap(lambda q: r.simulate(q, f, method="rk4"))(draws)
    for chunk in (None, 8):  # 37 = 4 chunks of 8 + 5, padded
        ens = r.simulate_ensemble(draws, f, chunk=chunk)
        assert list(np.flatnonzero(np.asarray(ens.status) != OK)) == [11]
        for k in OUTPUTS:
            np.testing.assert_allclose(getattr(ens, k), getattr(ref, k), rtol=1e-12,
                                       atol=1e-12, err_msg=f"{chunk} {k}")
