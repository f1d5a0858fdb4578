"""Quantities of interest: jnp functions of ``(Params, Simulation)`` -> one number per member.

A :class:`QoI` is a name, units, the forcing scenarios it needs and a function of one
member (the evaluator vmaps it over a chunk)::

    qoi(params, sims)  # sims: one Simulation per scenario in qoi.scenarios

Scenarios: ``"actual"`` (the site's forcing with its planting) and ``"no_planting"`` (the
same forcing with planting effort 0, the counterfactual of the water-yield decrease).
``V_crit`` needs no solve (``scenarios == ()``): it comes from the equilibria at the
site's MAP.  :func:`make_qoi` parses the names the CLI accepts (``QOI_HELP``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp

from ..model import LAYER_DEPTHS_M, SOM_PER_C, Params
from ..solve import Simulation

__all__ = ["QoI", "QoIContext", "make_qoi", "column_mean", "column_at", "runoff_decrease",
           "water_yield_decrease", "soc_sequestration", "v_crit", "COLUMNS", "QOI_HELP",
           "NAMED_QOIS"]

# Simulation columns a QoI may read, with units.
COLUMNS = {
    "V": "fraction", "veg_cover_pct": "%", "SOM": "% (0-20 cm)", "theta": "m^3/m^3",
    "rainfall": "mm/yr", "runoff": "mm/yr", "ET": "mm/yr", "drainage": "mm/yr",
    "water_yield": "mm/yr", "erosion": "t/ha/yr", "SOC_0_20": "Mg C/ha",
}

NAMED_QOIS = ("runoff_decrease", "water_yield_decrease", "soc_sequestration", "V_crit")

QOI_HELP = (
    "COLUMN:YEAR (e.g. V:2015) or COLUMN:Y0-Y1 (mean over the years, e.g. runoff:2005-2015) "
    f"with COLUMN one of {', '.join(COLUMNS)}; or one of {', '.join(NAMED_QOIS)} "
    "(runoff_decrease, water_yield_decrease, soc_sequestration need the site's planting year)")


@dataclasses.dataclass(frozen=True)
class QoIContext:
    """What a QoI may need to know about the run: years, planting start, MAP, intensity."""

    start: int
    end: int
    planting_start: int | None = None
    MAP_mm: float | None = None
    intensity: float = 1.0


@dataclasses.dataclass(frozen=True)
class QoI:
    """A quantity of interest: ``fn(params, sims) -> scalar`` for one member."""

    name: str
    units: str
    fn: Callable
    scenarios: tuple[str, ...] = ("actual",)
    description: str = ""

    def __call__(self, params: Params, sims: tuple[Simulation, ...]):
        return self.fn(params, sims)


def _column(sim: Simulation, params: Params, col: str):
    if col == "veg_cover_pct":
        return 100.0 * sim.V
    if col == "SOC_0_20":
        return _soc_0_20(sim, params)
    return getattr(sim, col)


def _soc_0_20(sim: Simulation, params: Params):
    """0-20 cm SOC stock, Mg C ha^-1 (= 10 x kg C m^-2) from the layer SOM (%)."""
    d = jnp.asarray(LAYER_DEPTHS_M[:2], sim.SOM_layers.dtype)
    kg_m2 = jnp.sum(sim.SOM_layers[:, :2] * params.rho_b * d, axis=-1) / SOM_PER_C
    return 10.0 * kg_m2


def _masked_mean(x, mask):
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.sum(mask)


def _check_years(ctx: QoIContext, y0: int, y1: int, what: str):
    if not (ctx.start <= y0 <= y1 <= ctx.end):
        raise ValueError(f"{what}: years {y0}-{y1} are outside the simulated years "
                         f"{ctx.start}-{ctx.end}")


def column_mean(col: str, y0: int, y1: int, ctx: QoIContext) -> QoI:
    """Mean of a simulated column over calendar years ``y0..y1`` (inclusive)."""
    if col not in COLUMNS:
        raise ValueError(f"unknown column {col!r}; known: {', '.join(COLUMNS)}")
    _check_years(ctx, y0, y1, col)

    def fn(params, sims):
        sim = sims[0]
        return _masked_mean(_column(sim, params, col), (sim.years >= y0) & (sim.years <= y1))

    name = f"{col}:{y0}" if y0 == y1 else f"{col}:{y0}-{y1}"
    what = f"{col} in {y0}" if y0 == y1 else f"mean {col} over {y0}-{y1}"
    return QoI(name, COLUMNS[col], fn, description=what)


def column_at(col: str, year: int, ctx: QoIContext) -> QoI:
    """A simulated column in one calendar year."""
    return column_mean(col, year, year, ctx)


def _planting(ctx: QoIContext, what: str) -> int:
    ps = ctx.planting_start
    if ps is None or not (ctx.start < ps <= ctx.end):
        raise ValueError(f"{what} needs a planting start inside the simulated years "
                         f"{ctx.start}-{ctx.end}; the site has {ps}")
    return ps


def runoff_decrease(ctx: QoIContext) -> QoI:
    """Mean annual runoff before planting minus from planting start + 3 on, mm/yr (the
    seed's definition, ``regional_magnitudes``; times the regional area for m^3/yr)."""
    ps = _planting(ctx, "runoff_decrease")
    if ps + 3 > ctx.end:
        raise ValueError(f"runoff_decrease needs years from {ps + 3} on; the run ends "
                         f"{ctx.end}")

    def fn(params, sims):
        s = sims[0]
        return (_masked_mean(s.runoff, s.years < ps)
                - _masked_mean(s.runoff, s.years >= ps + 3))

    return QoI("runoff_decrease", "mm/yr", fn,
               description=f"mean runoff before {ps} minus from {ps + 3} on")


def water_yield_decrease(ctx: QoIContext) -> QoI:
    """Vegetation-induced water-yield decrease: mean over the planting years of
    WY(no planting) - WY(planting), mm/yr."""
    ps = _planting(ctx, "water_yield_decrease")

    def fn(params, sims):
        s, off = sims
        return _masked_mean(off.water_yield - s.water_yield, s.years >= ps)

    return QoI("water_yield_decrease", "mm/yr", fn, scenarios=("actual", "no_planting"),
               description=f"mean WY(no planting) - WY(planting) over {ps}-{ctx.end}")


def soc_sequestration(ctx: QoIContext) -> QoI:
    """Mean annual gain of the 0-20 cm SOC stock over the planting years (mid-year to
    mid-year, from the year before planting), Mg C ha^-1 yr^-1."""
    ps = _planting(ctx, "soc_sequestration")

    def fn(params, sims):
        s = sims[0]
        dC = jnp.diff(_soc_0_20(s, params))
        return _masked_mean(dC, s.years[1:] >= ps)

    return QoI("soc_sequestration", "Mg C/ha/yr", fn,
               description=f"mean annual 0-20 cm SOC gain over {ps}-{ctx.end}")


def v_crit(ctx: QoIContext, n_grid: int = 128) -> QoI:
    """Cover of the saddle between bare soil and the restored state under the site's MAP
    and intensity with no planting (NaN where not bistable): ``equilibria(...).V_crit``.
    No solve; heavier per member than a solve (use a smaller N)."""
    if ctx.MAP_mm is None:
        raise ValueError("V_crit needs the site's MAP")
    from ..model import Climate, equilibria

    MAP, inten = float(ctx.MAP_mm), float(ctx.intensity)

    def fn(params, sims):
        dt = params.dtype
        clim = Climate(jnp.asarray(MAP, dt), jnp.asarray(inten, dt), jnp.zeros((), dt))
        return equilibria(params, clim, n_grid=n_grid).V_crit

    return QoI("V_crit", "fraction", fn, scenarios=(),
               description=f"saddle cover at MAP {MAP:g} mm, intensity {inten:g} mm/min, "
                           "no planting (NaN: not bistable)")


def make_qoi(name: str, ctx: QoIContext) -> QoI:
    """The QoI of a CLI name (see ``QOI_HELP``); ``ValueError`` naming the known ones."""
    name = name.strip()
    named = {"runoff_decrease": runoff_decrease, "water_yield_decrease": water_yield_decrease,
             "soc_sequestration": soc_sequestration, "V_crit": v_crit}
    if name in named:
        return named[name](ctx)
    col, sep, years = name.partition(":")
    if not sep:
        raise ValueError(f"unknown quantity of interest {name!r}; expected {QOI_HELP}")
    try:
        first, _, last = years.partition("-")
        y0 = int(first)
        y1 = int(last) if last else y0
    except ValueError:
        raise ValueError(f"{name!r}: expected COLUMN:YEAR or COLUMN:Y0-Y1 with integer "
                         "years") from None
    return column_mean(col, y0, y1, ctx)
