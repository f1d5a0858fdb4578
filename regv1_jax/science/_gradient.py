"""A synthetic MAP gradient: sites whose truth follows one stated scaling law (labelled
synthetic; generated here, never field data).

``GRADIENT_LAW``: ``eta1(MAP) = alpha0 + alpha1 (MAP / 500 mm)^(-beta)`` (the seed's
``eta1_per_SOM`` law, with MAP scaled by 500 mm); every other parameter at the
LoessPlateau prior value.  Each site is a twin (``fit.make_twin``): annual rainfall around
its MAP (CV 0.15, its own stream), Grain for Green planting from 1999, cover, 0-20 cm SOM,
runoff, erosion and soil moisture every year, 1976-2015, with a fifth of the default twin
noise (``GRADIENT_NOISE``); calibrated with the prior at weight 0.02 (``GRADIENT_CONFIG``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..fit import DEFAULT_NOISE, make_twin, synthetic_rainfall, write_twin

__all__ = ["GRADIENT_LAW", "GRADIENT_MAPS", "GRADIENT_NOISE", "GRADIENT_CONFIG",
           "gradient_eta1", "synthetic_gradient"]

GRADIENT_LAW = {"alpha0": 3.5, "alpha1_at_500mm": 2.5, "beta": 1.5}
GRADIENT_MAPS = tuple(float(x) for x in np.linspace(200.0, 700.0, 12))


def gradient_eta1(MAP, law=GRADIENT_LAW):
    """The stated law's eta1 (mm per % SOM) at ``MAP`` (mm/yr)."""
    MAP = np.asarray(MAP, np.float64)
    return law["alpha0"] + law["alpha1_at_500mm"] * (MAP / 500.0) ** (-law["beta"])


# The gradient's noise: a fifth of the twins' default (eta1 acts on runoff and soil
# moisture through SOM only; at the default noise one site's record barely identifies it).
GRADIENT_NOISE = {k: 0.2 * v for k, v in DEFAULT_NOISE.items()}
# Its calibration config: the prior as a weak penalty (the law, not the universal prior of
# 5 mm/% SOM, should set each site's eta1), and no global start search: every truth is the
# prior centre but for eta1, so the seed's stages start in the right basin (the search is
# tested on its own, tests/test_screen.py; here it would only add refits).
GRADIENT_CONFIG = {"prior_weight": 0.02, "screen": 0}


def synthetic_gradient(folder: str | Path, maps=GRADIENT_MAPS, start: int = 1976,
                       end: int = 2015, seed: int = 0, noise=None,
                       law=GRADIENT_LAW) -> Path:
    """Write the gradient's site CSVs (``gradient_<k>_synthetic.csv`` with their
    ``.json`` metadata), its sites table (``sites_gradient_synthetic.csv``) and its
    calibration config (``config_gradient_synthetic.json``: ``GRADIENT_CONFIG``) into
    ``folder``; returns the table's path.  Deterministic in ``seed``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    noise = GRADIENT_NOISE if noise is None else noise
    rows = []
    for k, MAP in enumerate(maps):
        name = f"Gradient-{k:02d}-synthetic"
        eta1 = float(gradient_eta1(MAP, law))
        rain = synthetic_rainfall(MAP, start, end, seed=seed + 100 + k)
        frame, meta = make_twin("LoessPlateau", name, {"eta1": eta1}, start, end, rain, 1999,
                                noise=noise, seed=seed + k, depth_every=None)
        meta["gradient_law"] = dict(law, form="eta1 = alpha0 + alpha1_at_500mm * "
                                    "(MAP / 500 mm)^(-beta)", MAP_mm=float(MAP))
        csv = folder / f"gradient_{k:02d}_synthetic.csv"
        write_twin(frame, meta, csv, csv.with_suffix(".json"))
        rows.append({"site": name, "region": "LoessPlateau", "data_file": csv.name,
                     "MAP_mm": MAP, "planting_start": 1999})
    table = folder / "sites_gradient_synthetic.csv"
    import pandas as pd

    pd.DataFrame(rows).to_csv(table, index=False)
    (folder / "config_gradient_synthetic.json").write_text(json.dumps(GRADIENT_CONFIG))
    (folder / "sites_gradient_synthetic.json").write_text(json.dumps(
        {"synthetic": True, "law": law, "maps_mm": list(maps), "years": [start, end],
         "seed": seed, "noise": dict(noise),
         "description": "synthetic MAP gradient (regv1_jax.science.synthetic_gradient): "
         "twins whose eta1 follows the stated law; not field data"}, indent=2))
    return table
