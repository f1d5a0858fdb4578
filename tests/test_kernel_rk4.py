"""``solve.KernelRK4``: the RK4 solve run by the generated CPU kernels, with forward-mode
derivatives from the tangent kernel (the forward sensitivity system, generated from
``jax.jvp`` of the model's functions), against the XLA ``RK4`` path."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import loess, yanhe_forcing

import regv1_jax as r
from regv1_jax.model import Layout
from regv1_jax.solve import RK4, KernelRK4, kernel

FIELDS = ("V", "SOM", "SOM_layers", "theta", "runoff", "ET", "drainage", "water_yield",
          "erosion", "storage_change")
FREE = ("r_V", "K_V", "lambda1", "ET_p", "e_s", "theta_star", "m_D", "i_ref", "V0", "SOM0",
        "eta1", "c_E")


def _available(dtype):
    space, p = loess(dtype)
    return kernel.available(p, Layout(), dtype) and jax.default_backend() == "cpu"


@pytest.fixture(autouse=True, scope="module")
def _needs_the_kernel():
    # checked when the file runs, not at collection (where every worker would build it)
    if not _available(jnp.float64):
        pytest.skip("no C++ compiler: KernelRK4 falls back to RK4")


def _outputs(sim):
    return jnp.concatenate([jnp.ravel(getattr(sim, k)) for k in FIELDS])


@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-12), (jnp.float32, 2e-5)])
def test_values_equal_the_xla_rk4_path(dtype, rtol):
    space, p = loess(dtype)
    f = yanhe_forcing(1995, 2010)
    draws = space.sample_prior(jax.random.PRNGKey(3), 16, dtype=dtype)
    a = jax.jit(jax.vmap(lambda q: r.simulate(q, f, solver=KernelRK4())))(draws)
    b = jax.jit(jax.vmap(lambda q: r.simulate(q, f, method="rk4")))(draws)
    for k in FIELDS:  # relative to each field's scale (storage change crosses zero)
        want = np.asarray(getattr(b, k))
        np.testing.assert_allclose(np.asarray(getattr(a, k)), want, rtol=rtol,
                                   atol=rtol * np.nanmax(np.abs(want)), err_msg=k)
    assert np.array_equal(np.asarray(a.status), np.asarray(b.status))


def test_forward_mode_jacobian_equals_jacfwd_of_xla_rk4():
    space, p = loess()
    f = yanhe_forcing(1995, 2010)
    free = space.select(*FREE)

    def out(solver):
        return lambda v: _outputs(r.simulate(free.unpack(v, p), f, solver=solver))

    v = free.pack(p)
    Jk = jax.jit(jax.jacfwd(out(KernelRK4())))(v)
    Jx = jax.jit(jax.jacfwd(out(RK4())))(v)
    scale = np.max(np.abs(np.asarray(Jx)), axis=0)
    np.testing.assert_allclose(np.asarray(Jk), np.asarray(Jx), rtol=0,
                               atol=1e-10 * float(scale.max()))
    # and a single jvp along a random direction
    t = jax.random.normal(jax.random.PRNGKey(0), v.shape)
    _, dk = jax.jvp(out(KernelRK4()), (v,), (t,))
    _, dx = jax.jvp(out(RK4()), (v,), (t,))
    np.testing.assert_allclose(np.asarray(dk), np.asarray(dx), rtol=1e-9,
                               atol=1e-12 * float(jnp.max(jnp.abs(dx))))


def test_nested_vmap_of_jacobians_folds_into_one_batch():
    """Starts x replicates x tangent directions: every batch axis folds into the kernel's
    member axis, and the numbers are those of the XLA path member by member."""
    space, p = loess()
    f = yanhe_forcing(1995, 2004)
    free = space.select("r_V", "K_V", "ET_p")
    v0 = free.pack(p)
    V = v0 + 0.1 * jax.random.normal(jax.random.PRNGKey(1), (2, 3) + v0.shape)

    def jac(solver):
        g = jax.jacfwd(lambda v: _outputs(r.simulate(free.unpack(v, p), f, solver=solver)))
        return jax.jit(jax.vmap(jax.vmap(g)))(V)

    np.testing.assert_allclose(np.asarray(jac(KernelRK4())), np.asarray(jac(RK4())),
                               rtol=1e-9, atol=1e-10)


def test_nonfinite_member_is_reported_and_derivatives_wrt_forcing_are_refused():
    space, p = loess()
    f = yanhe_forcing(1995, 2004)
    bad = p.replace(c_R=jnp.inf)
    sim = r.simulate(bad, f, solver=KernelRK4())
    assert int(sim.status) == r.status.code("nonfinite") and np.isnan(float(sim.V[0]))
    rain = jnp.asarray(f.rainfall)

    def by_rain(x):
        return r.simulate(p, dataclasses.replace(f, rainfall=x), solver=KernelRK4()).runoff

    with pytest.raises(NotImplementedError, match="parameters only"):
        jax.jvp(by_rain, (rain,), (jnp.ones_like(rain),))
    # reverse mode goes through the XLA solver the kernel solver names for it
    assert isinstance(KernelRK4().for_gradient(), RK4)
    g = jax.grad(lambda q: r.simulate(q, f, solver=KernelRK4().for_gradient()).runoff.sum())(p)
    assert np.isfinite(float(g.r_V))


def test_calibration_through_the_kernel_equals_the_xla_rk4_fit():
    """The staged fit with KernelRK4 (the calibration's default on CPU) and with the XLA
    RK4 solver: the same trajectory of Levenberg-Marquardt iterates."""
    space, p = loess()
    f = yanhe_forcing(1995, 2008)
    obs = r.get_site("Yanhe-basin").observations
    t = r.make_targets(obs, f)
    cfg = r.CalibrationConfig(stages=r.SEED_STAGES[:1] + r.SEED_STAGES[2:3], n_starts=2,
                              lm_steps=8, holdout=None)
    prob = r.fit.staged_problem(space, cfg.stages, cfg.n_starts, jax.random.PRNGKey(0))
    args = (p, prob, f, t, r.fit.cell_weights(t), jnp.asarray(1.0), space)
    kern = r.fit.fit_staged(*args, cfg.fit_settings())
    xla = r.fit.fit_staged(*args, dataclasses.replace(cfg.fit_settings(), solver=RK4()))
    np.testing.assert_allclose(np.asarray(kern.u), np.asarray(xla.u), rtol=1e-8, atol=1e-8)
    np.testing.assert_array_equal(np.asarray(kern.status), np.asarray(xla.status))


def test_batched_forcing_runs_one_kernel_call_with_a_forcing_per_member():
    """A vmapped forcing (sites with their own rainfall; a bootstrap's batched stage-skip
    flag broadcasts one): the values and a forward-mode derivative equal the XLA path, when
    every copy is the same and when the copies differ, and the program calls the kernel
    (no XLA RK4 loop inside)."""
    space, p = loess()
    f = yanhe_forcing(1995, 2004)
    free = space.select("r_V", "K_V", "ET_p")
    v0 = free.pack(p)
    V = v0 + 0.1 * jax.random.normal(jax.random.PRNGKey(2), (3,) + v0.shape)
    rain = jnp.asarray(f.rainfall)
    same = jnp.stack([rain] * 3)
    differ = rain * jnp.asarray([0.8, 1.0, 1.2])[:, None]

    def runner(solver):
        def one(v, x):
            g = dataclasses.replace(f, rainfall=x)
            return _outputs(r.simulate(free.unpack(v, p), g, solver=solver))
        both = jax.jit(jax.vmap(lambda v, x: jax.jvp(lambda u: one(u, x), (v,), (v,))))
        return lambda rains: tuple(np.asarray(a) for a in both(V, rains))

    kern, xla = runner(KernelRK4()), runner(RK4())
    for rains in (same, differ):
        (vk, jk), (vx, jx) = kern(rains), xla(rains)
        np.testing.assert_allclose(vk, vx, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(jk, jx, rtol=1e-9, atol=1e-10)
    assert not np.allclose(vx[0], vx[2])
    # one kernel call per evaluation, nothing of the XLA solver in the program
    rains = differ

    def one(v, x):
        g = dataclasses.replace(f, rainfall=x)
        return _outputs(r.simulate(free.unpack(v, p), g, solver=KernelRK4()))

    hlo = jax.jit(jax.vmap(one)).lower(V, rains).as_text()
    assert "custom_call @regv1_rk4" in hlo and "while" not in hlo
