"""Cross-site science: many sites in one call, thresholds with bootstrap intervals, the seed's
scaling laws, the Loess Plateau against the Chihuahuan comparator, regional scenarios with
intervals beside the published figures, and a synthetic MAP gradient (labelled synthetic)."""

from ._compare import REGION_METRICS as REGION_METRICS
from ._compare import compare_regions as compare_regions
from ._compare import default_region_sets as default_region_sets
from ._compare import region_metrics as region_metrics
from ._gradient import GRADIENT_CONFIG as GRADIENT_CONFIG
from ._gradient import GRADIENT_LAW as GRADIENT_LAW
from ._gradient import GRADIENT_MAPS as GRADIENT_MAPS
from ._gradient import GRADIENT_NOISE as GRADIENT_NOISE
from ._gradient import gradient_eta1 as gradient_eta1
from ._gradient import synthetic_gradient as synthetic_gradient
from ._laws import SEED_SIGNS as SEED_SIGNS
from ._laws import UNIVERSAL_ETA1_PER_SOM as UNIVERSAL_ETA1_PER_SOM
from ._laws import LawFit as LawFit
from ._laws import fit_linear as fit_linear
from ._laws import fit_power_law as fit_power_law
from ._laws import interval_sd as interval_sd
from ._multisite import COVARIATES as COVARIATES
from ._multisite import SITES_COLUMNS as SITES_COLUMNS
from ._multisite import SiteSpec as SiteSpec
from ._multisite import calibrate_many as calibrate_many
from ._multisite import pad_forcing as pad_forcing
from ._multisite import pad_targets as pad_targets
from ._multisite import read_sites_table as read_sites_table
from ._multisite import site_of as site_of
from ._scenario import ENGINEERING_SHARE as ENGINEERING_SHARE
from ._scenario import LOESS_PLATEAU_KM2 as LOESS_PLATEAU_KM2
from ._scenario import PUBLISHED as PUBLISHED
from ._scenario import SCENARIOS as SCENARIOS
from ._scenario import WORLD_BANK_USD_PER_HA as WORLD_BANK_USD_PER_HA
from ._scenario import ScenarioResult as ScenarioResult
from ._scenario import run_scenarios as run_scenarios
from ._scenario import scenario_effects as scenario_effects
from ._scenario import scenario_forcings as scenario_forcings
from ._study import ScalingStudy as ScalingStudy
from ._study import fit_laws as fit_laws
from ._study import scaling_study as scaling_study
from ._study import site_summaries as site_summaries
from ._thresholds import RAIN_SWEEP as RAIN_SWEEP
from ._thresholds import THRESHOLDS as THRESHOLDS
from ._thresholds import replicate_params as replicate_params
from ._thresholds import thresholds as thresholds
from ._thresholds import thresholds_table as thresholds_table
