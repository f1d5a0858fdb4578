"""Model v2 (issue 8): cover answers to water and stress; thresholds, bistability, regime
shifts; equilibria, stability and V_crit; the published figures each behaviour is held to
are named beside each test (docs/model.md, "Model v2")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import regv1_jax as r
from regv1_jax import data_path
from regv1_jax.fit import SEED_EVENTS, event_ratios
from regv1_jax.io import get_site, site_forcing
from regv1_jax.model import (
    Climate,
    Layout,
    bifurcation,
    drivers,
    equilibria,
    initial_state,
    rate_terms,
    som_topsoil,
    year_drivers,
)

LAYOUT = Layout()
# One rainfall sweep shape for every bifurcation call in this file (one compilation).
SWEEP = jnp.linspace(200.0, 700.0, 21)


@pytest.fixture(scope="module")
def loess():
    space = r.load_param_space("LoessPlateau")
    return space, space.prior_values()


@pytest.fixture(scope="module")
def loess_bistable():
    space = r.load_param_space("LoessPlateau")
    return space.override(data_path("parameter_sets/loess_bistable.json"))


@pytest.fixture(scope="module")
def jornada():
    space = r.load_param_space("ChihuahuanDesert")
    return space.override(data_path("parameter_sets/jornada_drought_collapse.json"))


def _state(p, V, theta, som_pct):
    """A flat state with cover V, soil moisture theta and a 0-20 cm SOM (lags in balance)."""
    c = som_pct * p.rho_b * 0.2 / 0.1724 / 2.0
    n = LAYOUT.n_lag
    parts = [V, c, c, c, theta] + [V] * n + [som_pct] * n + [0.0] * 4
    return jnp.stack([jnp.asarray(q, p.dtype) for q in parts])


def test_drought_removes_cover_at_K_V_and_only_bare_soil_is_absorbing(loess):
    _, p = loess
    d = drivers(p, 100.0, 1.0, 0.0, 0.0)
    dry = p.theta_wp + 0.3 * (p.theta_star - p.theta_wp)
    # At the carrying capacity, with soil moisture below theta_star, cover falls.
    dV = rate_terms(_state(p, p.K_V, dry, 1.0), p, d, LAYOUT)[0]
    assert float(dV) < -0.02
    # Bare soil without planting stays bare; with moisture above theta* and SOM above SOM*
    # cover at K_V is at rest, not pushed above it.
    assert float(rate_terms(_state(p, 0.0, dry, 0.0), p, d, LAYOUT)[0]) == 0.0
    wet = rate_terms(_state(p, p.K_V, p.theta_star + 0.03, p.SOM_star + 0.5), p, d, LAYOUT)[0]
    assert abs(float(wet)) < 1e-3
    # A six-year drought at 40% of MAP from a spin-up at K_V removes cover.
    f = r.make_forcing(2000, 2011, rainfall=np.r_[np.full(6, 400.0), np.full(6, 160.0)],
                       intensity=1.0, psi_plant=0.0)
    sim = r.simulate(p.replace(V0=p.K_V, SOM0=2.0), f)
    V = np.asarray(sim.V)
    assert V[-1] < 0.8 * V[5]


def test_cover_rises_with_rainfall_and_has_a_rainfall_limit(loess):
    """LoessPlateau central priors: no vegetated equilibrium below a MAP in 300-450 mm
    (Feng et al. 2016: revegetation near its water limit around 400 mm)."""
    _, p = loess
    b = bifurcation(p, SWEEP)
    e = b.equilibria
    veg_eq = np.asarray(e.valid & e.stable & (e.V > 0))
    veg = veg_eq.any(axis=1)
    Vmax = np.where(veg_eq, np.asarray(e.V), -1.0).max(axis=1)
    P = np.asarray(SWEEP)
    assert 300.0 <= float(b.P_veg) <= 450.0
    assert not veg[P < float(b.P_veg)].any() and veg[P > float(b.P_veg) + 1].all()
    restored = Vmax[P > float(b.P_veg)]
    assert np.all(np.diff(restored) >= -1e-9) and restored[-1] > restored[0] + 0.1
    assert np.all(np.asarray(e.residual)[np.asarray(e.valid)] < 1e-8)


def test_grain_for_green_at_yanhe_needs_planting(loess):
    """Chen et al. 2015 / Feng et al. 2016: plateau cover ~0.3 in 1999, ~0.6 by 2013."""
    _, p = loess
    site = get_site("Yanhe-basin")
    on = r.simulate(p, site_forcing(site, 1995, 2015))
    off = r.simulate(p, site_forcing(site, 1995, 2015, planting=False))
    V, V_off = np.asarray(on.V), np.asarray(off.V)
    assert 0.25 <= V[4] <= 0.4  # 1999
    assert 0.5 <= V[18:].mean() <= 0.7  # 2013-2015
    rise, rise_off = V[18:].mean() - V[4], V_off[18:].mean() - V_off[4]
    assert rise_off < 0.5 * rise


def test_soc_gain_under_planting_is_fastest_early_then_levels(loess):
    """Seed: SOC rises fast in the first 10-23 years, then levels; Deng et al. 2014:
    0-20 cm gain ~0.29 Mg C ha^-1 yr^-1 after conversion of cropland."""
    _, p = loess
    f = r.make_forcing(1999, 2098, rainfall=400.0, intensity=1.0, psi_plant=1.0)
    sim = r.simulate(p.replace(V0=0.3), f)
    soc = np.asarray(sim.SOM) * float(p.rho_b) * 0.2 / 0.1724  # kg C m^-2, 0-20 cm
    rate = np.diff(soc) * 10.0  # Mg C ha^-1 yr^-1
    assert 5 <= int(np.argmax(rate)) <= 23
    assert rate[50:].mean() < 0.5 * rate.max()
    assert 0.15 <= rate[:20].mean() <= 0.45


def test_bistable_loess_set_has_v_crit_in_the_seed_range(loess_bistable):
    """validation_sites.csv: V_crit 35-45% at Yanhe (MAP 400 mm)."""
    p = loess_bistable
    e = equilibria(p, Climate(400.0))
    valid, stable = np.asarray(e.valid), np.asarray(e.stable)
    V = np.asarray(e.V)[valid]
    assert V[0] == 0.0 and stable[valid][0]  # degraded (bare) state stable
    assert stable[valid][-1] and V[-1] > 0.5  # restored state stable
    assert 0.3 <= float(e.V_crit) <= 0.45 and V[0] < float(e.V_crit) < V[-1]
    saddle = np.asarray(e.max_real_eig)[valid][1]
    assert saddle > 0
    b = bifurcation(p, SWEEP)
    bistable = np.asarray(b.equilibria.bistable)
    assert bistable.sum() >= 5  # a range of MAP, not a point
    assert float(b.P_veg) < float(b.P_bare_unstable)


def test_equilibria_agree_with_long_integrations(loess_bistable):
    """Brute force: 1000-year runs from a grid of initial states end on a stable equilibrium
    of :func:`equilibria`, and each stable equilibrium is reached from some start."""
    p = loess_bistable
    e = equilibria(p, Climate(400.0))
    stable_V = np.asarray(e.V)[np.asarray(e.valid & e.stable)]
    V0, S0 = np.meshgrid([0.1, 0.3, 0.45, 0.6], [0.5, 1.0, 1.8])
    n = V0.size
    draws = jax.tree_util.tree_map(lambda x: jnp.full((n,), x), p)
    draws = draws.replace(V0=V0.ravel(), SOM0=S0.ravel())
    f = r.make_forcing(1, 1000, rainfall=400.0, intensity=1.0, psi_plant=0.0)
    sim = jax.vmap(lambda q: r.simulate(q, f, method="rk4", steps_per_year=4))(draws)
    final = np.asarray(sim.V)[:, -1]
    dist = np.abs(final[:, None] - stable_V[None, :]).min(axis=1)
    assert dist.max() < 2e-3
    reached = np.abs(final[:, None] - stable_V[None, :]).argmin(axis=1)
    assert set(reached) == set(range(stable_V.size))


def test_v_crit_is_differentiable(loess_bistable):
    p = loess_bistable

    def vc(l2):
        return equilibria(p.replace(lambda2=l2), Climate(400.0)).V_crit

    g = jax.grad(vc)(jnp.asarray(0.12))
    h = 1e-5
    fd = (vc(0.12 + h) - vc(0.12 - h)) / (2 * h)
    assert np.isfinite(float(g)) and float(g) == pytest.approx(float(fd), rel=1e-3)


def test_jornada_drought_collapse_without_recovery(jornada):
    """Black grama at the Jornada after the 1951-1956 drought (Herbel et al. 1972;
    Yao et al. 2006): a few percent cover to under 1%, no recovery in wetter decades."""
    p = jornada
    MAP = 250.0
    e = equilibria(p, Climate(MAP))
    assert bool(e.bistable)
    V_pre = float(np.nanmax(np.asarray(e.V)))
    som_pre = float(np.asarray(e.SOM)[np.nanargmax(np.asarray(e.V))])
    assert 0.02 <= V_pre <= 0.1
    rain = np.r_[np.full(5, MAP), np.full(6, 0.6 * MAP), np.full(150, 1.2 * MAP)]
    f = r.make_forcing(1946, 2106, rainfall=rain, intensity=1.0, psi_plant=0.0)
    V = np.asarray(r.simulate(p.replace(V0=V_pre, SOM0=som_pre), f).V)
    assert V[4] == pytest.approx(V_pre, rel=1e-3)  # in balance before the drought
    assert V[11] < 0.01  # 1957
    after = V[11:]
    wet = equilibria(p, Climate(1.2 * MAP))
    assert bool(wet.stable[0]) and float(wet.V[0]) == 0.0  # bare soil stays stable
    # No recovery: 150 wetter years stay far below the pre-drought cover and below the
    # wet climate's V_crit, and the cover ends lower than its post-drought peak (it is
    # heading for bare soil, not back to grassland).
    assert after.max() < min(V_pre / 5, float(wet.V_crit))
    assert after[-1] < after.max() and np.all(np.diff(after[-50:]) < 0)
    # Control: the same climate without the drought keeps the grassland.
    f_ctl = r.make_forcing(1946, 2016, rainfall=np.r_[np.full(11, MAP), np.full(60, 1.2 * MAP)],
                           intensity=1.0, psi_plant=0.0)
    assert float(r.simulate(p.replace(V0=V_pre, SOM0=som_pre), f_ctl).V[-1]) > V_pre


def test_initial_state_is_in_balance(loess):
    _, p = loess
    f = r.make_forcing(1995, 1996, rainfall=450.0, intensity=1.0, psi_plant=0.0)
    d = year_drivers(p, f)
    y0 = initial_state(p, d, LAYOUT)
    dy = rate_terms(y0, p, d, LAYOUT)
    assert abs(float(p.Z_r * dy[LAYOUT.THETA])) < 1e-6  # mm yr^-1
    assert float(som_topsoil(y0[1], y0[2], p.rho_b)) == pytest.approx(float(p.SOM0))
    # With SOM0 at the balance of V0, no SOC layer moves at the start.
    e = equilibria(p, Climate(450.0))
    i = int(np.nanargmax(np.asarray(e.V)))
    q = p.replace(V0=float(e.V[i]), SOM0=float(e.SOM[i]))
    y = initial_state(q, drivers(q, 450.0, 1.0, 0.0, 0.0), LAYOUT)
    dq = rate_terms(y, q, drivers(q, 450.0, 1.0, 0.0, 0.0), LAYOUT)
    assert np.allclose(np.asarray(dq[:5]), 0.0, atol=1e-8)
    assert np.allclose(np.asarray(y[:5]), np.asarray(e.state[i][:5]), rtol=1e-7)


def test_initial_state_gradient_matches_finite_differences(loess):
    _, p = loess
    f = r.make_forcing(1995, 1996, rainfall=450.0, intensity=1.0, psi_plant=0.0)

    def theta0(eta1):
        q = p.replace(eta1=eta1)
        return initial_state(q, year_drivers(q, f), LAYOUT)[LAYOUT.THETA]

    g = jax.grad(theta0)(jnp.asarray(5.0))
    fd = (theta0(5.0 + 1e-4) - theta0(5.0 - 1e-4)) / 2e-4
    assert float(g) == pytest.approx(float(fd), rel=1e-5)


def test_event_constraints_reachable_and_runoff_capped(loess):
    space, p = loess
    sed, _ = event_ratios(p, SEED_EVENTS)
    # Sediment per unit runoff (the runoff cut is the infiltration constraint's business).
    assert np.allclose(np.log(np.asarray(sed)), np.log([3.28, 5.21, 16.75]), atol=0.2)
    lo, hi = space.spec("c_E").lower, space.spec("c_E").upper
    assert lo < np.log(3.28) < hi  # 3.28x at 2 mm/min inside the prior
    # Runoff never exceeds rainfall, even for an absurd runoff coefficient.
    q = p.replace(c_R=0.3)
    d = drivers(q, 500.0, 50.0, 0.0, 0.0)  # 50 mm/min storms
    y = _state(q, 0.0, 0.5, 1.0)
    Q = rate_terms(y, q, d, LAYOUT)[LAYOUT.Q]
    assert 0.0 < float(Q) <= 500.0
