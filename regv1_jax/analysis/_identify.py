"""Identifiability from the data rows at the optimum and from a sample of parameter vectors.

Two sources, one result (:class:`Identifiability`):

* **data rows** (:func:`identify_data`): ``_fit.local_identifiability`` at the estimate
  (Jacobian of the data and event rows on each parameter's transform scale, data-only
  correlation and VIF); the information matrix is the Fisher matrix ``J^T J`` of those rows
  (scaled by ``max(1, chi2/dof)``) in units of the prior's information: ``G = D F D`` with
  ``D`` the prior sd on the transform scale, so that eigenvalues are dimensionless and
  comparable across parameters (an eigenvalue below 1: the data constrain that combination
  less than the prior does).
* **a sample** (:func:`identify_sample`), e.g. bootstrap replicates: correlation and VIF of
  the columns on the transform scale (log for log-transformed parameters); the information
  matrix is the inverse of the sample covariance in the same prior units (for replicates of
  a MAP fit it includes the prior's own information, 1 per direction at prior weight 1).

The sloppy subspace: the eigenvectors of ``G`` with the smallest eigenvalues, with their
loadings on the parameters.  Flags: ``|r| > 0.9`` (``CORR_FLAG``) and ``VIF > 10``.

Replicates file (the bootstrap's output contract): CSV with a header, one column per
parameter (named as in ``priors_seed.json``, physical units), one row per replicate; other
columns are ignored except an optional ``status`` (rows whose status is not ``0``/``ok``
are dropped and counted).  Or NPZ with ``replicates`` (n, p), ``names`` (p,) and an
optional ``status`` (n,).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..fit import column_vif, correlated_pairs, information_eigen, local_identifiability
from ..model import ParamSpace

__all__ = ["VIF_FLAG", "Identifiability", "identify_data", "identify_sample",
           "read_replicates"]

VIF_FLAG = 10.0
N_SLOPPY = 3  # directions listed by default (smallest information first)


@dataclasses.dataclass(frozen=True)
class Identifiability:
    """Correlation, VIF and information eigen-directions of ``names`` from one source."""

    source: str  # "data" or "sample"
    names: tuple[str, ...]
    corr: np.ndarray  # (k, k); NaN for parameters the data do not identify
    vif: np.ndarray  # (k,)
    information: np.ndarray  # (k,) ascending, prior units
    directions: np.ndarray  # (k, k): column j is the direction of information[j]
    n: int  # data rows, or replicates used
    notes: tuple[str, ...] = ()
    extra: dict = dataclasses.field(default_factory=dict)

    def pairs(self) -> list[dict]:
        return correlated_pairs(list(self.names), self.corr)

    def vif_flags(self) -> list[str]:
        return [n for n, v in zip(self.names, self.vif) if not v <= VIF_FLAG]

    def sloppy(self, n: int = N_SLOPPY) -> list[dict]:
        """The ``n`` least-informed directions: information, ``weak`` (< 1: less than the
        prior's), the largest loadings first; a direction's sign is arbitrary (fixed here
        so that its largest loading is positive)."""
        out = []
        for j in range(min(n, len(self.names))):
            v = self.directions[:, j]
            v = v * np.sign(v[np.argmax(np.abs(v))])
            order = np.argsort(-np.abs(v))
            out.append({"direction": j + 1, "information": float(self.information[j]),
                        "weak": bool(self.information[j] < 1.0),
                        "loadings": {self.names[i]: float(v[i]) for i in order}})
        return out

    def summary(self, n_sloppy: int = N_SLOPPY) -> dict:
        return {"source": self.source, "names": list(self.names), "n": self.n,
                "pairs_abs_r_gt_0.9": [p for p in self.pairs() if p["flag"]],
                "seed_pairs": [p for p in self.pairs() if not p["flag"]],
                "VIF": {n: float(v) for n, v in zip(self.names, self.vif)},
                "VIF_gt_10": self.vif_flags(),
                "information_eigenvalues": [float(x) for x in self.information],
                "sloppy": self.sloppy(n_sloppy), "notes": list(self.notes), **self.extra}


def identify_data(space: ParamSpace, params, forcing, targets, names, cfg,
                  events: bool = True) -> Identifiability:
    """From the data rows at the estimate ``params`` (``local_identifiability``)."""
    d = local_identifiability(space, params, forcing, targets, names, cfg, events=events)
    extra = {k: d[k] for k in ("chi2_dof", "residual_variance_scale", "rank",
                               "condition_number", "basis")}
    extra["not_identified"] = [n for n in names if d["params"][n]["not_identified"]]
    return Identifiability("data", tuple(names), np.asarray(d["corr"], float),
                           np.asarray(d["VIF"], float),
                           np.asarray(d["information_eigenvalues"], float),
                           np.asarray(d["information_eigenvectors"], float),
                           int(d["n_data_rows"]), extra=extra)


def _to_transform_scale(space: ParamSpace, names, X):
    X = np.asarray(X, float)
    out, D = np.empty_like(X), np.empty(len(names))
    for j, n in enumerate(names):
        sp = space.spec(n)
        x = X[:, j]
        x_bar = float(np.mean(x))
        out[:, j] = np.log(x) if sp.transform_scale == "log" else x
        # The prior sd (on the prior's scale) carried to the transform scale at the mean.
        if sp.scale == sp.transform_scale:
            D[j] = sp.prior_sd
        elif sp.transform_scale == "log":  # prior linear: d log x = dx / x
            D[j] = sp.prior_sd / x_bar
        else:  # prior log, transform linear: dx = x d log x
            D[j] = sp.prior_sd * x_bar
    return out, D


def identify_sample(X, names, space: ParamSpace, dropped: int = 0) -> Identifiability:
    """From a sample ``X`` (n, k) of parameter vectors (physical units, one column per name;
    e.g. bootstrap replicates).  Rows with a non-finite or out-of-bounds value are dropped
    and counted; parameters that do not vary in the sample are left out (noted)."""
    names = list(names)
    X = np.asarray(X, float)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ValueError(f"sample of shape {X.shape} for {len(names)} parameters")
    notes = []
    lo = np.array([space.spec(n).bound_lower for n in names])
    hi = np.array([space.spec(n).bound_upper for n in names])
    good = np.all(np.isfinite(X) & (X >= lo) & (X <= hi), axis=1)
    if (~good).any():
        notes.append(f"{int(np.sum(~good))} rows with non-finite or out-of-bounds values "
                     "dropped")
    X = X[good]
    varying = np.ptp(X, axis=0) > 0 if X.size else np.zeros(len(names), bool)
    if (~varying).any():
        notes.append("constant in the sample (left out): "
                     + ", ".join(n for n, v in zip(names, varying) if not v))
    names = [n for n, v in zip(names, varying) if v]
    X = X[:, varying]
    if len(names) < 2 or X.shape[0] < len(names) + 2:
        raise ValueError(f"{X.shape[0]} usable rows for {len(names)} varying parameters: "
                         "need at least 2 parameters and parameters + 2 rows")
    if dropped:
        notes.append(f"{dropped} replicates not converged (status) dropped")
    Z, D = _to_transform_scale(space, names, X)
    corr = np.corrcoef(Z, rowvar=False)
    C = np.cov(Z / D, rowvar=False)
    lam, V, weak, _ = information_eigen(np.linalg.pinv(C, hermitian=True))
    return Identifiability("sample", tuple(names), corr, column_vif(Z), lam, V, X.shape[0],
                           tuple(notes), extra={"weak_directions": int(np.sum(weak)),
                                                "basis": "sample correlation, VIF and "
                                                "inverse covariance on each parameter's "
                                                "transform scale, in prior-sd units"})


def read_replicates(path, space: ParamSpace) -> tuple[np.ndarray, list[str], int]:
    """``(X, names, n_dropped)`` from a replicates CSV or NPZ (module docstring)."""
    path = Path(path)
    known = [s.name for s in space.specs]
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                X = np.asarray(z["replicates"], float)
                names = [str(n) for n in z["names"]]
                status = np.asarray(z["status"]) if "status" in z.files else None
        except (KeyError, ValueError, OSError) as err:
            raise ValueError(f"{path}: not a replicates NPZ (arrays 'replicates', 'names'; "
                             f"{err})") from None
        if X.ndim != 2 or X.shape[1] != len(names):
            raise ValueError(f"{path}: 'replicates' has shape {X.shape}, 'names' {len(names)}")
    else:
        import pandas as pd

        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a readable CSV ({err})") from None
        names = [c for c in df.columns if c in known]
        try:
            X = df[names].to_numpy(float)
        except ValueError as err:
            raise ValueError(f"{path}: non-numeric parameter values ({err})") from None
        status = df["status"].to_numpy() if "status" in df.columns else None
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{path}: unknown parameter(s) {unknown}")
    if len(names) < 2:
        raise ValueError(f"{path}: needs columns for at least two parameters (names as in "
                         f"priors_seed.json, e.g. r_V, K_V); found {names}")
    dropped = 0
    if status is not None:
        ok = np.array([str(s).strip().lower() in ("0", "ok", "0.0") for s in status])
        dropped = int(np.sum(~ok))
        X = X[ok]
    return X, names, dropped
