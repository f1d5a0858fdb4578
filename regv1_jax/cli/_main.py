"""The ``regv1`` group: one command per module (``_sites``, ``_simulate``, ``_calibrate``,
``_equilibria``, ``_sobol``, ``_bootstrap``, ``_profile``, ``_scaling``, ``_scenario``),
registered here.  Files and plots
stay at this edge; the library below never flips ``jax.config``."""

from __future__ import annotations

import sys

import click

from ._bootstrap import bootstrap
from ._calibrate import calibrate
from ._common import CACHE_HELP
from ._equilibria import equilibria
from ._profile import identify_cmd, profile_cmd
from ._scaling import scaling
from ._scenario import scenario
from ._simulate import SIM_COLUMNS, simulate
from ._sites import sites
from ._sobol import sobol

__all__ = ["main", "SIM_COLUMNS"]


@click.group(epilog=CACHE_HELP)
@click.version_option(package_name="regv1_jax")
def main():
    """regv1: vegetation-SOM-soil moisture regeneration model (JAX)."""


for _cmd in (sites, simulate, calibrate, equilibria, sobol, bootstrap, profile_cmd,
             identify_cmd, scaling, scenario):
    main.add_command(_cmd)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
