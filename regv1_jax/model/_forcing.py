"""Forcings: annual series of rainfall, storm intensity and the two interventions.

Every forcing is held constant over a calendar year, so the only dates at which the vector
field jumps are the year boundaries; :meth:`Forcing.jump_ts` hands them to the step-size
controller.  Time inside the solver is ``tau = t - start`` (years since the start year),
which keeps float32 runs accurate.
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = ["Forcing", "make_forcing", "grain_for_green", "ramp"]

Series = Float[Array, " years"]


class Forcing(eqx.Module):
    """Annual forcing series from ``start`` to ``start + n - 1`` (calendar years).

    Fields (each shape ``(n,)``):
        rainfall: annual rainfall P, mm yr^-1.
        intensity: storm intensity index i, mm min^-1.
        psi_plant: planting effort in [0, 1] (Grain for Green).
        psi_eng: share of area under engineering measures in [0, 1].
    """

    rainfall: Series
    intensity: Series
    psi_plant: Series
    psi_eng: Series
    start: int = eqx.field(static=True)

    def __check_init__(self):
        n = np.shape(self.rainfall)[-1]
        for name in ("intensity", "psi_plant", "psi_eng"):
            if np.shape(getattr(self, name))[-1] != n:
                raise ValueError(f"forcing {name!r} has {np.shape(getattr(self, name))[-1]} "
                                 f"years, rainfall has {n}")

    @property
    def n_years(self) -> int:
        return int(np.shape(self.rainfall)[-1])

    @property
    def years(self) -> np.ndarray:
        return np.arange(self.start, self.start + self.n_years)

    @property
    def end(self) -> int:
        return self.start + self.n_years - 1

    def jump_ts(self, dtype=None) -> Float[Array, " jumps"]:
        """Solver-time dates (years since start) where the forcings may jump."""
        return jnp.arange(1, self.n_years, dtype=dtype)

    def index(self, tau, xp=jnp):
        """Index of the forcing year that holds at solver time ``tau`` (right-continuous)."""
        k = xp.floor(tau)
        return xp.clip(k, 0, self.n_years - 1).astype(np.int32)

    def astype(self, dtype) -> Forcing:
        return Forcing(
            jnp.asarray(self.rainfall, dtype),
            jnp.asarray(self.intensity, dtype),
            jnp.asarray(self.psi_plant, dtype),
            jnp.asarray(self.psi_eng, dtype),
            self.start,
        )

    def numpy(self) -> Forcing:
        """The same forcing with numpy leaves (for the scipy reference)."""
        def f64(x):
            return np.asarray(x, dtype=np.float64)

        return Forcing(f64(self.rainfall), f64(self.intensity), f64(self.psi_plant),
                       f64(self.psi_eng), self.start)


def grain_for_green(start: int, end: int, planting_start: int | None = 1999,
                    effort: float = 1.0) -> np.ndarray:
    """Planting effort: ``effort`` from ``planting_start`` (GTGP began 1999) on, else 0."""
    years = np.arange(start, end + 1)
    if planting_start is None:
        return np.zeros(years.shape)
    return np.where(years >= planting_start, float(effort), 0.0)


def ramp(start: int, end: int, ramp_start: int, ramp_end: int, v0: float, v1: float
         ) -> np.ndarray:
    """A series equal to ``v0`` up to ``ramp_start``, rising linearly to ``v1`` at ``ramp_end``."""
    years = np.arange(start, end + 1)
    if ramp_end <= ramp_start:
        return np.where(years >= ramp_start, v1, v0).astype(float)
    w = np.clip((years - ramp_start) / (ramp_end - ramp_start), 0.0, 1.0)
    return v0 + (v1 - v0) * w


def _series(name: str, value, start: int, end: int, fill: float | None) -> np.ndarray:
    years = np.arange(start, end + 1)
    if isinstance(value, Mapping):
        if fill is None:
            missing = [int(y) for y in years if int(y) not in value]
            if missing:
                raise ValueError(f"forcing {name!r}: no value for years {missing} and no fill")
        out = np.array([float(value.get(int(y), fill)) for y in years])
    else:
        arr = np.asarray(value, dtype=float)
        if arr.ndim == 0:
            out = np.full(years.shape, float(arr))
        elif arr.shape == years.shape:
            out = arr.copy()
        else:
            raise ValueError(
                f"forcing {name!r}: expected a scalar, a year->value mapping or {len(years)} "
                f"values for {start}-{end}, got shape {arr.shape}"
            )
    if not np.all(np.isfinite(out)):
        raise ValueError(f"forcing {name!r}: non-finite values {out}")
    return out


def make_forcing(
    start: int,
    end: int,
    rainfall,
    intensity=1.0,
    psi_plant=0.0,
    psi_eng=0.0,
    rainfall_fill: float | None = None,
    dtype=None,
) -> Forcing:
    """Build a :class:`Forcing` for calendar years ``start..end`` inclusive.

    Arguments:
        rainfall: mm yr^-1; a scalar, an array of ``end - start + 1`` values, or a
            ``{year: value}`` mapping whose missing years take ``rainfall_fill`` (the MAP).
        intensity: mm min^-1, same forms.
        psi_plant, psi_eng: in [0, 1], same forms (see :func:`grain_for_green`, :func:`ramp`).
    Raises:
        ValueError for end < start, negative rainfall or intensity <= 0, efforts outside
        [0, 1], a wrong length or a missing year without fill.
    """
    if end < start:
        raise ValueError(f"end year {end} is before start year {start}")
    P = _series("rainfall", rainfall, start, end, rainfall_fill)
    i = _series("intensity", intensity, start, end, None)
    pp = _series("psi_plant", psi_plant, start, end, None)
    pe = _series("psi_eng", psi_eng, start, end, None)
    if np.any(P < 0):
        raise ValueError(f"forcing 'rainfall' must be >= 0 mm/yr, got {P}")
    if np.any(i <= 0):
        raise ValueError(f"forcing 'intensity' must be > 0 mm/min, got {i}")
    for name, s in (("psi_plant", pp), ("psi_eng", pe)):
        if np.any((s < 0) | (s > 1)):
            raise ValueError(f"forcing {name!r} must lie in [0, 1], got {s}")
    return Forcing(jnp.asarray(P, dtype), jnp.asarray(i, dtype), jnp.asarray(pp, dtype),
                   jnp.asarray(pe, dtype), start)
