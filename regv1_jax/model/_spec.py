"""What is known about one parameter (:class:`ParamSpec`), its accepted units and the errors
of parameter files."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax.numpy as jnp

__all__ = ["ParameterError", "ParameterWarning", "ParamSpec", "UNITS", "read_json",
           "scale_bounds", "ci_on_scale"]


class ParameterError(ValueError):
    """A parameter file or value is invalid; the message names region, parameter and file."""


class ParameterWarning(UserWarning):
    """A parameter value is admissible but unusual (e.g. outside its prior CI_95)."""


# Units we accept for each parameter (first entry is canonical; the rest are spellings of it).
UNITS: dict[str, tuple[str, ...]] = {
    "r_V": ("yr^-1", "1/yr"),
    "K_V": ("fraction",),
    "lambda1": ("yr^-1 per (m^3/m^3)",),
    "lambda2": ("yr^-1 per %SOM",),
    "theta_star": ("m^3/m^3",),
    "SOM_star": ("%",),
    "a1": ("kg C m^-2 yr^-1 per V",),
    "a2": ("yr^-1", "1/yr"),
    "eta1": ("mm per %SOM", "mm/(% SOM)"),
    "tau_VS": ("yr",),
    "tau_SH": ("yr",),
    "s_plant": ("yr^-1", "1/yr"),
    "Z_r": ("mm",),
    "theta_fc": ("m^3/m^3",),
    "theta_wp": ("m^3/m^3",),
    "ET_p": ("mm yr^-1", "mm/yr"),
    "e_s": ("fraction",),
    "c_R": ("fraction",),
    "gamma": ("dimensionless",),
    "omega": ("dimensionless",),
    "b_V": ("fraction",),
    "b_eng": ("fraction",),
    "k_L": ("mm yr^-1", "mm/yr"),
    "c_L": ("dimensionless",),
    "k_E": ("t ha^-1 yr^-1 per mm^m_E",),
    "m_E": ("dimensionless",),
    "c_E": ("dimensionless",),
    "omega_E": ("dimensionless",),
    "e_C": ("dimensionless",),
    "rho_b": ("g cm^-3",),
    "f_0": ("fraction",),
    "f_1": ("fraction",),
    "f_2": ("fraction",),
    "m_1": ("dimensionless",),
    "m_2": ("dimensionless",),
    "i_ref": ("mm min^-1", "mm/min"),
    "m_D": ("yr^-1", "1/yr"),
    "k_I": ("fraction",),
    "V0": ("fraction",),
    "SOM0": ("%",),
}

@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """What is known about one parameter: prior value and 95% interval, physical bounds,
    units and scales.

    ``lower``/``upper`` are the prior's CI_95; ``bound_lower``/``bound_upper`` the admissible
    physical range (hard limits of the fit, ``bounds_reason`` says why).  ``scale`` (the
    prior's) is ``"log"`` when the CI_95 is positive and spans a factor of 3 or more, else
    ``"linear"``; the prior is normal on that scale with mean at the value and standard
    deviation ``(hi - lo) / 3.92`` (so that CI_95 is its 95% interval).  ``transform_scale``
    is ``"log"`` when the bounds are positive and span a factor of 3 or more; the
    unconstrained coordinate is the logit of the position inside the bounds on that scale.
    """

    name: str
    value: float
    lower: float
    upper: float
    units: str
    source: str
    file: str
    bound_lower: float = -math.inf
    bound_upper: float = math.inf
    bounds_reason: str = ""

    def __post_init__(self):
        if not math.isfinite(self.bound_lower) or not math.isfinite(self.bound_upper):
            # No physical bounds given (a ParamSpec built by hand): the CI_95 serves.
            object.__setattr__(self, "bound_lower", self.lower)
            object.__setattr__(self, "bound_upper", self.upper)

    @property
    def scale(self) -> str:
        return "log" if self.lower > 0 and self.upper / self.lower >= 3.0 else "linear"

    @property
    def transform_scale(self) -> str:
        lo, hi = self.bound_lower, self.bound_upper
        return "log" if lo > 0 and hi / lo >= 3.0 else "linear"

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.bound_lower, self.bound_upper)

    @property
    def prior_sd(self) -> float:
        f = math.log if self.scale == "log" else float
        return (f(self.upper) - f(self.lower)) / 3.92

    @property
    def prior_mean(self) -> float:
        return math.log(self.value) if self.scale == "log" else self.value

    def standardised(self, x):
        """``(s(x) - s(value)) / sd`` on this parameter's scale: the prior as a residual."""
        s = jnp.log(x) if self.scale == "log" else x
        return (s - self.prior_mean) / self.prior_sd


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise ParameterError(f"{path}: not valid JSON ({err})") from err


def scale_bounds(spec: ParamSpec) -> tuple[float, float]:
    """The physical bounds on the transform's scale."""
    if spec.transform_scale == "log":
        return math.log(spec.bound_lower), math.log(spec.bound_upper)
    return spec.bound_lower, spec.bound_upper


def ci_on_scale(spec: ParamSpec) -> tuple[float, float]:
    """The CI_95 on the prior's scale."""
    if spec.scale == "log":
        return math.log(spec.lower), math.log(spec.upper)
    return spec.lower, spec.upper


