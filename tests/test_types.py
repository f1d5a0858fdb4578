"""The jaxtyping shape annotations hold at run time: the package imported under jaxtyping's
import hook (every annotated function and module checked by beartype) runs a simulation,
an ensemble, equilibria, the vector transforms and a small staged fit, and a wrongly shaped
input is refused by its annotation.  (The static side is ``mypy`` in the test command.)"""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    from jaxtyping import install_import_hook
    with install_import_hook("regv1_jax", "beartype.beartype"):
        import regv1_jax as r
    import jax, jax.numpy as jnp, numpy as np
    from jaxtyping import TypeCheckError
    jax.config.update("jax_enable_x64", True)
    space = r.load_param_space("LoessPlateau")
    p = space.prior_values(jnp.float64)
    f = r.make_forcing(1995, 2002, rainfall=450.0,
                       psi_plant=r.grain_for_green(1995, 2002, 1999))
    sim = r.simulate(p, f)
    r.simulate(p, f, method="rk4")
    draws = space.sample_prior(jax.random.PRNGKey(0), 8, dtype=jnp.float64)
    ens = r.simulate_ensemble(draws, f)
    assert ens.V.shape == (8, f.n_years)
    r.equilibria(p, r.Climate(400.0))
    u = space.vector_to_unconstrained(space.stack(p))
    space.vector_to_constrained(u)
    obs = r.get_site("Yanhe-basin").observations
    targets = r.make_targets(obs, f)
    # one start: the search's draws are scored but none starts the basin stage
    cfg = r.CalibrationConfig(stages=r.SEED_STAGES[:1], n_starts=1, lm_steps=2,
                              method="rk4", steps_per_year=4, holdout=None, screen=64)
    fitted, res = r.calibrate_stages(space, p, f, targets, cfg)
    assert res[0].iterations >= 1
    try:
        r.make_forcing(1995, 2002, rainfall=450.0).__class__(
            jnp.ones((2, 8)), jnp.ones(8), jnp.zeros(8), jnp.zeros(8), 1995)
    except TypeCheckError:
        print("SHAPE REFUSED")
    print("TYPED OK")
""")


def test_annotations_hold_at_run_time():
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "TYPED OK" in res.stdout and "SHAPE REFUSED" in res.stdout, res.stdout
