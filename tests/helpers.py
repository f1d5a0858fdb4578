"""Shared test helpers."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import regv1_jax as r


def loess(dtype=jnp.float64):
    space = r.load_param_space("LoessPlateau")
    return space, space.prior_values(dtype)


def yanhe_forcing(start=1995, end=2015, planting_start=1999, rainfall=450.0):
    return r.make_forcing(start, end, rainfall=rainfall, intensity=1.0,
                          psi_plant=r.grain_for_green(start, end, planting_start))


def tree_allclose(a, b, rtol=1e-7, atol=0.0):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    return all(np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, equal_nan=True)
               for x, y in zip(la, lb))


def run_on_cpu_devices(code: str, n: int = 4, marker: str = "SHARDED OK"):
    """Run ``code`` in a fresh Python with ``n`` XLA host devices; assert it printed
    ``marker`` (sharding tests need the flag before jax is imported)."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
               PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and marker in res.stdout, res.stderr[-3000:]
