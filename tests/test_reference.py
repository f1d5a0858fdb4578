"""The JAX solvers against an independent scipy ``solve_ivp`` reference on the same equations.

Error measures (per annual output, over all years of a run):

* ``pointwise``: ``max |a - ref| / max(|ref|, 1e-3 max|ref|)`` - relative error of every
  value; the floor only guards outputs that cross zero (``storage_change``).
* ``scaled``: ``max |a - ref| / max|ref|`` - error relative to the output's magnitude over
  the run.  Used for the fixed-step RK4 path, whose error on small, steeply nonlinear fluxes
  (drainage ~ theta^c_L with c_L = 4 in the desert run) reaches ~1.1e-5 pointwise at 24
  steps per year while staying below ~6e-6 of the series' scale.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import regv1_jax as r
from regv1_jax.solve import OUTPUT_KEYS, solve_scipy, solve_scipy_grid

TIGHT = dict(rtol=1e-10, atol=1e-12)


def _loess():
    p = r.load_param_space("LoessPlateau").prior_values(jnp.float64)
    f = r.make_forcing(1995, 2015, rainfall=450.0, intensity=1.0,
                       psi_plant=r.grain_for_green(1995, 2015))
    return p, f


def _desert():
    p = r.load_param_space("ChihuahuanDesert").prior_values(jnp.float64)
    years = np.arange(21)
    rain = 260.0 + 60.0 * np.sin(1.3 * years)  # 200..320 mm, varying every year
    f = r.make_forcing(1995, 2015, rainfall=rain, intensity=1.5,
                       psi_eng=r.ramp(1995, 2015, 2000, 2010, 0.0, 0.3))
    return p, f


SCENARIOS = {"loess_g4g": _loess, "desert_eng": _desert}


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def case(request):
    p, f = SCENARIOS[request.param]()
    ref = solve_scipy(p, f, method="Radau", rtol=1e-10, atol=1e-12)
    return request.param, p, f, ref


def _errors(sim, ref, floor):
    out = {}
    for k in OUTPUT_KEYS:
        a, b = np.asarray(getattr(sim, k)), ref[k]
        scale = np.max(np.abs(b))
        den = np.maximum(np.abs(b), floor * scale) if scale > 0 else 1.0
        out[k] = float(np.max(np.abs(a - b) / den))
    return out


def _pointwise(sim, ref):
    return _errors(sim, ref, 1e-3)


def _scaled(sim, ref):
    return _errors(sim, ref, 1.0)


def _check(errs, tol, what):
    bad = {k: f"{v:.2e}" for k, v in errs.items() if not v <= tol}
    assert not bad, f"{what}: outputs off the scipy reference by more than {tol:g}: {bad}"


def test_reference_outputs_are_sane(case):
    name, p, f, ref = case
    assert set(OUTPUT_KEYS) <= set(ref)
    n = f.n_years
    for k in OUTPUT_KEYS:
        assert ref[k].dtype == np.float64
        assert np.all(np.isfinite(ref[k])), k
        assert ref[k].shape == ((n, 3) if k == "SOM_layers" else (n,))
    np.testing.assert_array_equal(ref["years"], np.arange(1995, 2016))
    # Water balance closes up to the reference's tolerance.
    resid = (ref["rainfall"] - ref["runoff"] - ref["ET"] - ref["drainage"]
             - ref["storage_change"])
    assert np.max(np.abs(resid)) < 1e-6 * np.max(ref["rainfall"])


@pytest.mark.parametrize("method", ["tsit5", "dopri8"])
def test_adaptive_explicit_matches_scipy(case, method):
    name, p, f, ref = case
    sim = r.simulate(p, f, method=method, **TIGHT)
    assert int(sim.status) == 0
    _check(_pointwise(sim, ref), 1e-6, f"{name}/{method}")


def test_scipy_dop853_matches_radau(case):
    name, p, f, ref = case
    other = solve_scipy(p, f, method="DOP853", rtol=1e-11, atol=1e-13)
    errs = {k: float(np.max(np.abs(other[k] - ref[k])
                            / np.maximum(np.abs(ref[k]), 1e-3 * np.max(np.abs(ref[k])))))
            for k in OUTPUT_KEYS}
    _check(errs, 1e-6, f"{name}/scipy DOP853 vs Radau")


def test_kvaerno5_matches_scipy(case):
    name, p, f, ref = case
    sim = r.simulate(p, f, method="kvaerno5", **TIGHT)
    assert int(sim.status) == 0
    _check(_pointwise(sim, ref), 1e-6, f"{name}/kvaerno5")


def test_rk4_matches_scipy(case):
    name, p, f, ref = case
    sim = r.simulate(p, f, method="rk4", steps_per_year=24)
    assert int(sim.status) == 0
    _check(_scaled(sim, ref), 1e-5, f"{name}/rk4 (24 steps/yr, scaled)")
    _check(_pointwise(sim, ref), 3e-5, f"{name}/rk4 (24 steps/yr, pointwise)")


def test_grid_shape_and_float32_params():
    p, f = _loess()
    grid = solve_scipy_grid(p.astype(jnp.float32), f, method="DOP853", rtol=1e-8, atol=1e-10)
    assert grid.shape == (2 * f.n_years + 1, r.Layout().size)
    assert grid.dtype == np.float64
    # Running integrals start at zero and never decrease.
    cum = grid[:, r.Layout().cum]
    assert np.all(cum[0] == 0.0) and np.all(np.diff(cum, axis=0) >= 0.0)


def test_batched_params_rejected():
    space = r.load_param_space("LoessPlateau")
    draws = space.sample_prior(jax.random.PRNGKey(0), 2, dtype=jnp.float64)
    _, f = _loess()
    with pytest.raises(ValueError, match="one parameter set"):
        solve_scipy(draws, f)
