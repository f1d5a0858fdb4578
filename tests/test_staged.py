"""The staged fit as one pure jitted function (``regv1_jax.fit.fit_staged``): the host
pipeline (``calibrate_stages``, which calls it once on a problem padded to five stages)
gives the same values and status codes, it vmaps over per-cell weight vectors exactly like a
loop, and a second call does not recompile."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import regv1_jax as r
from regv1_jax.fit import (
    SEED_STAGES,
    STAGE_CODES,
    TARGET_VARIABLES,
    CalibrationConfig,
    calibrate_stages,
    fit_staged,
    make_targets,
    make_twin,
    staged_problem,
    trace_count,
    twin_forcing,
    write_twin,
)

START, END = 1999, 2008
RAIN = 420 + 60 * np.sin(np.arange(START, END + 1) * 1.7)
STAGES = tuple(dataclasses.replace(s, events=False) for s in SEED_STAGES[:2])
CFG = CalibrationConfig(stages=STAGES, n_starts=2, lm_steps=6, prior_weight=0.0,
                        holdout=None, method="rk4", steps_per_year=6)
N_BATCH = 16


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    frame, meta = make_twin("LoessPlateau", "staged-synthetic", {"r_V": 0.15, "a2": 0.045},
                            START, END, RAIN, 1999, depth_every=None)
    path = tmp_path_factory.mktemp("staged") / "staged_synthetic.csv"
    write_twin(frame, meta, path)
    obs = r.load_site(path, "staged-synthetic")
    space = r.load_param_space("LoessPlateau")
    forcing = twin_forcing(START, END, RAIN, 1999)
    targets = make_targets(obs, forcing)
    prior = space.prior_values(jnp.float64)
    prob = staged_problem(space, STAGES, CFG.n_starts, jax.random.PRNGKey(CFG.seed))
    n = len(TARGET_VARIABLES) * forcing.n_years
    args = (prob, forcing, targets)
    return space, prior, args, n, CFG.fit_settings()


# Both compile the whole staged fit (~2 and ~4 minutes on 2 loaded cores): marked slow to
# keep the default suite under 10 minutes; run with `pytest -m slow tests/test_staged.py`.
@pytest.mark.slow
def test_matches_the_host_pipeline_and_reports_status(problem):
    space, prior, (prob, forcing, targets), n, settings = problem
    res = fit_staged(prior, prob, forcing, targets, jnp.ones(n), jnp.asarray(0.0), space,
                     settings)
    host, stages = calibrate_stages(space, prior, forcing, targets, CFG)
    for name in ("r_V", "K_V", "a1", "a2"):
        assert float(getattr(res.params, name)) == pytest.approx(
            float(getattr(host, name)), rel=1e-6), name
    assert [int(c) for c in res.status] == [STAGE_CODES[s.status] for s in stages]
    assert float(res.params.tau_VS) == float(prior.tau_VS)  # never free: exact


@pytest.mark.slow
def test_vmap_over_weights_equals_a_loop_and_does_not_recompile(problem):
    space, prior, (prob, forcing, targets), n, settings = problem
    rng = np.random.default_rng(0)
    W = jnp.asarray(rng.poisson(1.0, size=(N_BATCH, n)).astype(float))
    pw = jnp.asarray(0.0)

    def one(w):
        return fit_staged(prior, prob, forcing, targets, w, pw, space, settings)

    batched = jax.vmap(one)(W)
    loop = [one(W[i]) for i in range(4)]
    before = trace_count()
    loop += [one(W[i]) for i in range(4, N_BATCH)]
    jax.vmap(one)(W)
    assert trace_count() == before  # second calls (batched and single) reuse the compiled fit
    for i, res in enumerate(loop):
        np.testing.assert_allclose(np.asarray(batched.u[i]), np.asarray(res.u), rtol=1e-7,
                                   atol=1e-9)
        np.testing.assert_array_equal(np.asarray(batched.status[i]), np.asarray(res.status))
    # A weight vector that drops every cover cell skips stage (a) (status, not an error).
    w0 = jnp.where(jnp.arange(n) < forcing.n_years, 0.0, 1.0)
    res0 = one(w0)
    assert int(res0.status[0]) == STAGE_CODES["skipped"]
    assert float(res0.params.r_V) == pytest.approx(float(prior.r_V), rel=1e-12)
