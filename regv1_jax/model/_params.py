"""Model parameters: values, priors, bounds and the unconstrained transform.

``Params`` is an ``eqx.Module`` whose every field is one model parameter (a scalar array, or
a batch of them under ``vmap``).  ``ParamSpace`` carries what is known *about* the parameters
of one region: units, the prior (value and CI_95 from the JSON files in ``data/``), the
admissible physical bounds (the JSON ``bounds`` with their ``bounds_reason``) and the scales
(linear or log) of the prior and of the bounded logistic transform.  The bounds are hard (the
optimiser cannot leave them); the prior is soft (a penalty that the data may overrule).
``ParamSpace.select(...)`` returns a ``FreeSet``, which maps the chosen parameters to a flat
vector in R^k and back, keeping every other parameter frozen.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ._spec import (
    UNITS,
    ParameterError,
    ParameterWarning,
    ParamSpec,
    ci_on_scale,
    read_json,
    scale_bounds,
)

__all__ = ["PARAM_NAMES", "SEED_PARAM_NAMES", "Params", "ParamSpace", "FreeSet"]

Scalar = Float[Array, "*batch"]


class Params(eqx.Module):
    """Every parameter of the V-SOM-theta model (see ``docs/model.md`` for units and roles).

    The first nine are the seed's; the rest are the constants of the model document, each
    with a prior in ``data/priors_extra.json``; ``V0`` and ``SOM0`` are the
    initial state at the start year (the rest of the state starts in balance with them).
    """

    # --- the seed's nine -------------------------------------------------------------------
    r_V: Scalar  # yr^-1, intrinsic cover growth rate
    K_V: Scalar  # fraction, cover carrying capacity
    lambda1: Scalar  # yr^-1 per (m^3/m^3), moisture feedback on cover
    lambda2: Scalar  # yr^-1 per %SOM, SOM feedback on cover
    theta_star: Scalar  # m^3/m^3, moisture threshold
    SOM_star: Scalar  # %, SOM lock-in threshold
    a1: Scalar  # kg C m^-2 yr^-1 per V, litter input
    a2: Scalar  # yr^-1, SOC decay (top layer)
    eta1: Scalar  # mm per %SOM, retention gain
    # --- lags and planting -----------------------------------------------------------------
    tau_VS: Scalar  # yr, mean delay cover -> litter input
    tau_SH: Scalar  # yr, mean delay topsoil SOM -> hydrology
    s_plant: Scalar  # yr^-1, planting rate at full effort
    # --- soil water bucket ------------------------------------------------------------------
    Z_r: Scalar  # mm, root-zone depth
    theta_fc: Scalar  # m^3/m^3, field capacity without SOM gain
    theta_wp: Scalar  # m^3/m^3, wilting point
    ET_p: Scalar  # mm yr^-1, potential evapotranspiration
    e_s: Scalar  # fraction, bare-soil share of potential ET
    c_R: Scalar  # fraction, runoff coefficient at saturation, reference intensity, bare soil
    gamma: Scalar  # dimensionless, exponent of g(theta)
    omega: Scalar  # dimensionless, intensity exponent of runoff
    b_V: Scalar  # fraction, runoff reduction at full cover
    b_eng: Scalar  # fraction, runoff reduction under engineering measures
    k_L: Scalar  # mm yr^-1, deep drainage at field capacity
    c_L: Scalar  # dimensionless, drainage exponent
    # --- sediment ---------------------------------------------------------------------------
    k_E: Scalar  # t ha^-1 yr^-1 per mm^m_E, sediment coefficient
    m_E: Scalar  # dimensionless, runoff exponent of sediment
    c_E: Scalar  # dimensionless, cover effect on sediment at reference intensity
    omega_E: Scalar  # dimensionless, intensity dependence of the cover effect
    e_C: Scalar  # dimensionless, carbon enrichment ratio of eroded sediment
    # --- soil carbon profile ----------------------------------------------------------------
    rho_b: Scalar  # g cm^-3, bulk density
    f_0: Scalar  # fraction, litter input share 0-10 cm (shares are normalised to sum 1)
    f_1: Scalar  # fraction, litter input share 10-20 cm
    f_2: Scalar  # fraction, litter input share 20-40 cm
    m_1: Scalar  # dimensionless, decay multiplier 10-20 cm (0-10 cm is 1)
    m_2: Scalar  # dimensionless, decay multiplier 20-40 cm
    i_ref: Scalar  # mm min^-1, reference storm intensity
    # --- model v2: drought mortality and the infiltration feedback -------------------------
    m_D: Scalar  # yr^-1, drought mortality of cover at the wilting point
    k_I: Scalar  # fraction, cover scale of the infiltration feedback V (1+k_I)/(V+k_I)
    # --- initial state ----------------------------------------------------------------------
    V0: Scalar  # fraction, cover at the start year
    SOM0: Scalar  # %, SOM of 0-20 cm at the start year

    def replace(self, **values) -> Params:
        """Return a copy with the named parameters replaced (values cast to this dtype)."""
        unknown = set(values) - set(PARAM_NAMES)
        if unknown:
            raise ParameterError(f"unknown parameter(s) {sorted(unknown)}; known: {PARAM_NAMES}")
        dtype = self.dtype
        return dataclasses.replace(
            self, **{k: jnp.asarray(v, dtype=dtype) for k, v in values.items()}
        )

    @property
    def dtype(self):
        return jnp.asarray(self.r_V).dtype

    def astype(self, dtype) -> Params:
        """Cast every parameter to ``dtype`` (e.g. ``jnp.float32`` for speed)."""
        return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=dtype), self)

    def as_dict(self) -> dict[str, np.ndarray]:
        """Parameters as a ``{name: numpy array}`` dict (for reports and files)."""
        return {k: np.asarray(getattr(self, k)) for k in PARAM_NAMES}

    @classmethod
    def from_dict(cls, values: Mapping[str, object], dtype=None) -> Params:
        missing = [k for k in PARAM_NAMES if k not in values]
        if missing:
            raise ParameterError(f"missing parameter(s) {missing}")
        return cls(**{k: jnp.asarray(values[k], dtype=dtype) for k in PARAM_NAMES})


PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Params))
SEED_PARAM_NAMES: tuple[str, ...] = PARAM_NAMES[:9]
assert set(UNITS) == set(PARAM_NAMES)


class ParamSpace(eqx.Module):
    """Priors, bounds and transforms for every parameter of one region.

    Build with :func:`load_param_space`.  All methods are pure and work under ``jit``,
    ``vmap`` and ``grad`` (the spec table is static).
    """

    region: str = eqx.field(static=True)
    specs: tuple[ParamSpec, ...] = eqx.field(static=True)

    def __check_init__(self):
        if tuple(s.name for s in self.specs) != PARAM_NAMES:
            raise ParameterError("ParamSpace specs must list every parameter in order")

    # --- lookup ------------------------------------------------------------------------------
    def spec(self, name: str) -> ParamSpec:
        try:
            return self.specs[PARAM_NAMES.index(name)]
        except ValueError:
            raise ParameterError(
                f"unknown parameter {name!r} (region {self.region!r}); known: {PARAM_NAMES}"
            ) from None

    def _tree(self, attr: str, dtype=None) -> Params:
        return Params(**{s.name: jnp.asarray(getattr(s, attr), dtype=dtype) for s in self.specs})

    def prior_values(self, dtype=None) -> Params:
        """The prior central values (the JSON ``value`` fields) as ``Params``."""
        return self._tree("value", dtype)

    def lower(self, dtype=None) -> Params:
        return self._tree("lower", dtype)

    def upper(self, dtype=None) -> Params:
        return self._tree("upper", dtype)

    def bound_lower(self, dtype=None) -> Params:
        return self._tree("bound_lower", dtype)

    def bound_upper(self, dtype=None) -> Params:
        return self._tree("bound_upper", dtype)

    # --- transforms ----------------------------------------------------------------------
    def to_unconstrained(self, params: Params) -> Params:
        """Map physical values inside the physical bounds to R (logit of the scaled
        position)."""

        def f(spec: ParamSpec, x):
            lo, hi, x = _on_scale(spec, x)
            eps = 10 * jnp.finfo(x.dtype).eps
            frac = jnp.clip((x - lo) / (hi - lo), eps, 1 - eps)
            return jnp.log(frac) - jnp.log1p(-frac)

        return self._map(f, params)

    def to_constrained(self, u: Params) -> Params:
        """Inverse of :meth:`to_unconstrained`: R -> the open interval of the physical
        bounds."""

        def f(spec: ParamSpec, z):
            z = jnp.asarray(z)
            lo, hi, _ = _on_scale(spec, z)
            y = lo + (hi - lo) * jax.nn.sigmoid(z)
            y = jnp.exp(y) if spec.transform_scale == "log" else y
            # exp(log(hi)) may round above hi
            return jnp.clip(y, spec.bound_lower, spec.bound_upper)

        return self._map(f, u)

    def _map(self, fn, tree: Params) -> Params:
        return Params(**{s.name: fn(s, getattr(tree, s.name)) for s in self.specs})

    # --- flat vectors: every parameter, in ``PARAM_NAMES`` order ------------------------
    def stack(self, params: Params) -> Float[Array, "*batch n_params"]:
        """The parameters as one vector (last axis in ``PARAM_NAMES`` order)."""
        return jnp.stack([jnp.asarray(getattr(params, n)) for n in PARAM_NAMES], axis=-1)

    def unstack(self, x: Float[Array, "*batch n_params"]) -> Params:
        """Inverse of :meth:`stack`."""
        return Params(**{n: x[..., i] for i, n in enumerate(PARAM_NAMES)})

    def mask(self, names: Iterable[str]) -> Bool[Array, " n_params"]:
        """Boolean vector: True at the parameters ``names``."""
        names = set(names)
        for n in names:
            self.spec(n)
        return jnp.asarray([n in names for n in PARAM_NAMES])

    def _columns(self):
        """Per-parameter constants of the vector transforms (numpy, static)."""
        lo_t, hi_t = zip(*(scale_bounds(s) for s in self.specs))
        return dict(
            t_log=np.array([s.transform_scale == "log" for s in self.specs]),
            t_lo=np.array(lo_t), t_hi=np.array(hi_t),
            b_lo=np.array([s.bound_lower for s in self.specs]),
            b_hi=np.array([s.bound_upper for s in self.specs]),
            p_log=np.array([s.scale == "log" for s in self.specs]),
            p_mean=np.array([s.prior_mean for s in self.specs]),
            p_sd=np.array([s.prior_sd for s in self.specs]))

    def vector_to_unconstrained(self, x: Float[Array, "*batch n_params"]
                                ) -> Float[Array, "*batch n_params"]:
        """:meth:`to_unconstrained` on a stacked vector (one vectorised pass)."""
        return self._to_u(jnp.asarray(x), jnp)

    def vector_to_constrained(self, u: Float[Array, "*batch n_params"]
                              ) -> Float[Array, "*batch n_params"]:
        """:meth:`to_constrained` on a stacked vector (one vectorised pass)."""
        return self._to_x(jnp.asarray(u), jnp, jax.nn.sigmoid)

    def host_to_unconstrained(self, x: np.ndarray) -> np.ndarray:
        """:meth:`vector_to_unconstrained` in numpy (host code: no dispatch per op)."""
        return self._to_u(np.asarray(x), np)

    def host_to_constrained(self, u: np.ndarray) -> np.ndarray:
        """:meth:`vector_to_constrained` in numpy (host code: no dispatch per op)."""
        from scipy.special import expit

        return self._to_x(np.asarray(u), np, expit)

    def _to_u(self, x, xp):
        c = self._columns()
        s = xp.where(c["t_log"], xp.log(xp.where(c["t_log"], x, 1.0)), x)
        eps = 10 * xp.finfo(x.dtype).eps
        frac = xp.clip((s - c["t_lo"]) / (c["t_hi"] - c["t_lo"]), eps, 1 - eps)
        return xp.log(frac) - xp.log1p(-frac)

    def _to_x(self, u, xp, sigmoid):
        c = self._columns()
        y = c["t_lo"] + (c["t_hi"] - c["t_lo"]) * sigmoid(u)
        y = xp.where(c["t_log"], xp.exp(xp.where(c["t_log"], y, 0.0)), y)
        return xp.clip(y, c["b_lo"], c["b_hi"])

    def vector_standardised(self, x: Float[Array, "*batch n_params"]
                            ) -> Float[Array, "*batch n_params"]:
        """:meth:`ParamSpec.standardised` of every parameter of a stacked vector: the
        prior as residuals."""
        c = self._columns()
        x = jnp.asarray(x)
        s = jnp.where(c["p_log"], jnp.log(jnp.where(c["p_log"], x, 1.0)), x)
        return (s - c["p_mean"]) / c["p_sd"]

    # --- prior ---------------------------------------------------------------------------
    def log_prior(self, params: Params, names: Iterable[str] | None = None) -> Scalar:
        """Gaussian log prior density (up to a constant) on each parameter's scale.

        Arguments:
            params: physical parameter values.
            names: which parameters to include (default all).
        Returns:
            scalar (or batch) sum of ``-0.5 ((s(x) - s(value)) / sd)^2``.
        """
        names = PARAM_NAMES if names is None else tuple(names)
        total = jnp.asarray(0.0)
        for name in names:
            x = jnp.asarray(getattr(params, name))
            total = total - 0.5 * self.spec(name).standardised(x) ** 2
        return total

    def prior_on_scale(self, names: Sequence[str] | None = None) -> tuple[np.ndarray, ...]:
        """``(mean, sd, ci, log)`` of ``names`` (default every parameter, in order) on each
        prior's scale (log for the log-normal priors): the prior's mean and sd, its CI_95
        ``(k, 2)`` and whether the scale is log.  A value ``s`` on that scale is the
        physical ``exp(s)`` where ``log``, else ``s`` (the prior draws, the fit's starts
        and the global search's draws all map so)."""
        specs = self.specs if names is None else tuple(self.spec(n) for n in names)
        return (np.array([s.prior_mean for s in specs]), np.array([s.prior_sd for s in specs]),
                np.array([ci_on_scale(s) for s in specs]).reshape(len(specs), 2),
                np.array([s.scale == "log" for s in specs]))

    def sample_prior(self, key, n: int | None = None, dtype=None) -> Params:
        """Draws from the prior truncated to its CI_95 (normal on each parameter's scale).

        The truncation keeps starts and Monte-Carlo draws in the prior's central 95%
        (always inside the physical bounds); the fit itself may leave the CI_95.

        Returns ``Params`` with leading batch dimension ``n`` (or scalars if ``n`` is None).
        """
        shape = () if n is None else (n,)
        keys = jax.random.split(key, len(self.specs))
        mean, sd, ci, log = self.prior_on_scale()
        # One vmapped draw for every parameter (parameter j from keys[j]: the values of
        # one call per parameter, in a handful of operations instead of 40 calls).
        z = jax.vmap(lambda k, a, b: jax.random.truncated_normal(
            k, a, b, shape, dtype=dtype or jnp.float32))(
            keys, (ci[:, 0] - mean) / sd, (ci[:, 1] - mean) / sd)
        col = (-1,) + (1,) * len(shape)
        s = jnp.asarray(mean.reshape(col), z.dtype) + jnp.asarray(sd.reshape(col), z.dtype) * z
        out = {name: (jnp.exp(s[j]) if log[j] else s[j]) for j, name in enumerate(PARAM_NAMES)}
        return Params(**out)

    # --- subsets -------------------------------------------------------------------------
    def select(self, *names: str) -> FreeSet:
        """The free-parameter set of a fit stage: ``space.select("r_V", "K_V")``."""
        if len(names) == 1 and not isinstance(names[0], str):
            names = tuple(names[0])
        for n in names:
            self.spec(n)
        if len(set(names)) != len(names):
            raise ParameterError(f"parameter named twice in {names}")
        return FreeSet(self, tuple(names))

    # --- overrides -----------------------------------------------------------------------
    def override(self, path: str | Path, params: Params | None = None) -> Params:
        """Values from a JSON file in the seed's schema replace those of ``params``.

        The file may hold ``{region: {name: {"value": ...}}}`` (the seed's layout) or
        ``{name: {"value": ...}}``.  Values must lie inside the physical bounds (else a
        ``ParameterError``); a value outside the prior CI_95 is accepted with a
        ``ParameterWarning``.
        """
        path = Path(path)
        doc = read_json(path)
        block = doc.get(self.region, doc) if isinstance(doc, Mapping) else None
        if not isinstance(block, Mapping):
            raise ParameterError(f"{path}: expected a JSON object")
        regions = {k for k in block if k not in UNITS and not k.startswith("_")}
        if regions:
            raise ParameterError(
                f"{path}: region {self.region!r} not found (file has {sorted(regions)}) "
                f"or unknown parameter(s) {sorted(regions)}"
            )
        base = self.prior_values() if params is None else params
        values = {}
        for name, entry in block.items():
            if name.startswith("_"):
                continue
            where = f"region {self.region!r}, parameter {name!r} in {path.name}"
            raw = entry.get("value") if isinstance(entry, Mapping) else entry
            try:
                value = float(raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ParameterError(f"{where}: value must be a number, got {raw!r}") from None
            spec = self.spec(name)
            if (isinstance(entry, Mapping) and "units" in entry
                    and entry["units"] not in UNITS[name]):
                raise ParameterError(
                    f"{where}: unknown units {entry['units']!r}; expected {list(UNITS[name])}"
                )
            if not (math.isfinite(value) and spec.bound_lower <= value <= spec.bound_upper):
                raise ParameterError(
                    f"{where}: value {value} lies outside its physical bounds "
                    f"[{spec.bound_lower}, {spec.bound_upper}] ({spec.bounds_reason}; "
                    f"{spec.file})"
                )
            if not spec.lower <= value <= spec.upper:
                warnings.warn(
                    f"{where}: value {value} lies outside its prior CI_95 "
                    f"[{spec.lower}, {spec.upper}] ({spec.file}); accepted (inside the "
                    f"physical bounds [{spec.bound_lower}, {spec.bound_upper}])",
                    ParameterWarning, stacklevel=2)
            values[name] = value
        return base.replace(**values)


def _on_scale(spec: ParamSpec, x):
    lo, hi = scale_bounds(spec)
    if spec.transform_scale == "log":
        x = jnp.log(x)
    return lo, hi, x


class FreeSet(eqx.Module):
    """A chosen subset of free parameters and its flat unconstrained vector.

    ``pack`` maps ``Params`` to a vector u in R^k (k = number of free names); ``unpack``
    maps u back, taking every other parameter from ``base`` with its gradient stopped.
    """

    space: ParamSpace
    names: tuple[str, ...] = eqx.field(static=True)

    @property
    def size(self) -> int:
        return len(self.names)

    def pack(self, params: Params) -> Float[Array, "*batch k"]:
        u = self.space.to_unconstrained(params)
        return jnp.stack([jnp.asarray(getattr(u, n)) for n in self.names], axis=-1)

    def unpack(self, vec: Float[Array, "*batch k"], base: Params) -> Params:
        base = jax.lax.stop_gradient(base)
        u = self.space.to_unconstrained(base)
        u = dataclasses.replace(u, **{n: vec[..., i] for i, n in enumerate(self.names)})
        full = self.space.to_constrained(u)
        # Frozen parameters come back exactly as given (not through the round trip).
        return dataclasses.replace(
            base, **{n: getattr(full, n) for n in self.names}
        )

    def log_prior(self, params: Params) -> Scalar:
        return self.space.log_prior(params, self.names)
