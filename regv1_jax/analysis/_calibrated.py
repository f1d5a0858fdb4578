"""Analyses of a finished site calibration (``fit.SiteCalibration``)."""

from __future__ import annotations

import dataclasses

from ._bootstrap import BootstrapResult, bootstrap_study

__all__ = ["site_bootstrap"]


def site_bootstrap(cal, **kw) -> BootstrapResult:
    """The block bootstrap of a :class:`fit.SiteCalibration`: its training targets
    (spreads from the training cells, holdout masked, as ``calibrate_site``), its fitted
    parameters, and the stages it kept (the basin stage too, when the calibration kept it:
    ``fit.calibration_stages``); ``kw``: ``bootstrap_study`` keywords.  Each replicate
    refits from the point estimate (no new global start search)."""
    from ..fit import calibration_stages, fitted_names, training_targets

    targets = training_targets(cal.observations, cal.forcing, cal.holdout_years,
                               cal.params.dtype)
    names = fitted_names(cal.stages)
    if not names:
        raise ValueError("no stage fitted any parameter: nothing to bootstrap")
    cfg = dataclasses.replace(cal.config, stages=calibration_stages(cal), screen=0, free=())
    return bootstrap_study(cal.space, cal.params, cal.forcing, targets, cfg, names, **kw)
