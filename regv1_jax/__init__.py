"""regv1_jax: a differentiable V-SOM-theta solver for ecosystem regeneration.

Users import from here; every other module is private and free to change.
"""

from ._calibrate import SEED_STAGES as SEED_STAGES
from ._calibrate import STAGE_STATUS as STAGE_STATUS
from ._calibrate import CalibrationConfig as CalibrationConfig
from ._calibrate import CalibrationError as CalibrationError
from ._calibrate import Stage as Stage
from ._calibrate import StageResult as StageResult
from ._calibrate import calibrate_stages as calibrate_stages
from ._calibrate import load_config as load_config
from ._calibrate import run_stage as run_stage
from ._data import DataError as DataError
from ._data import Observations as Observations
from ._data import convert_gauge as convert_gauge
from ._data import load_site as load_site
from ._data import read_observations as read_observations
from ._ensemble import simulate_ensemble as simulate_ensemble
from ._equilibria import Bifurcation as Bifurcation
from ._equilibria import Climate as Climate
from ._equilibria import Equilibria as Equilibria
from ._equilibria import bifurcation as bifurcation
from ._equilibria import cover_rate as cover_rate
from ._equilibria import equilibria as equilibria
from ._fit import SiteCalibration as SiteCalibration
from ._fit import calibrate_site as calibrate_site
from ._fit import fit_metrics as fit_metrics
from ._fit import local_identifiability as local_identifiability
from ._forcing import Forcing as Forcing
from ._forcing import grain_for_green as grain_for_green
from ._forcing import make_forcing as make_forcing
from ._forcing import ramp as ramp
from ._model import Layout as Layout
from ._objective import Targets as Targets
from ._objective import make_targets as make_targets
from ._params import PARAM_NAMES as PARAM_NAMES
from ._params import SEED_PARAM_NAMES as SEED_PARAM_NAMES
from ._params import FreeSet as FreeSet
from ._params import ParameterError as ParameterError
from ._params import ParameterWarning as ParameterWarning
from ._params import Params as Params
from ._params import ParamSpace as ParamSpace
from ._params import ParamSpec as ParamSpec
from ._params import load_param_space as load_param_space
from ._paths import data_path as data_path
from ._report import write_outputs as write_outputs
from ._sites import get_site as get_site
from ._sites import read_forcing_csv as read_forcing_csv
from ._sites import site_forcing as site_forcing
from ._solve import STATUS_MESSAGES as STATUS_MESSAGES
from ._solve import Simulation as Simulation
from ._solve import simulate as simulate

try:  # one source for the version: the package metadata (pyproject.toml)
    from importlib.metadata import PackageNotFoundError as _NotFound
    from importlib.metadata import version as _version

    __version__ = _version("regv1_jax")
except _NotFound:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0+unknown"
