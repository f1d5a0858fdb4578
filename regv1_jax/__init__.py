"""regv1_jax: a differentiable V-SOM-theta solver for ecosystem regeneration.

Users import from here; every other module is private and free to change.
"""

from ._paths import data_path as data_path
from .fit._config import SEED_STAGES as SEED_STAGES
from .fit._config import STAGE_STATUS as STAGE_STATUS
from .fit._config import CalibrationConfig as CalibrationConfig
from .fit._config import CalibrationError as CalibrationError
from .fit._config import Stage as Stage
from .fit._config import StageResult as StageResult
from .fit._config import calibrate_stages as calibrate_stages
from .fit._config import load_config as load_config
from .fit._config import run_stage as run_stage
from .fit._objective import Targets as Targets
from .fit._objective import make_targets as make_targets
from .fit._site import SiteCalibration as SiteCalibration
from .fit._site import calibrate_site as calibrate_site
from .fit._site import fit_metrics as fit_metrics
from .fit._site import local_identifiability as local_identifiability
from .io._observations import DataError as DataError
from .io._observations import Observations as Observations
from .io._observations import convert_gauge as convert_gauge
from .io._observations import load_site as load_site
from .io._observations import read_observations as read_observations
from .io._sites import get_site as get_site
from .io._sites import read_forcing_csv as read_forcing_csv
from .io._sites import site_forcing as site_forcing
from .model._equilibria import Bifurcation as Bifurcation
from .model._equilibria import Climate as Climate
from .model._equilibria import Equilibria as Equilibria
from .model._equilibria import bifurcation as bifurcation
from .model._equilibria import cover_rate as cover_rate
from .model._equilibria import equilibria as equilibria
from .model._field import Layout as Layout
from .model._forcing import Forcing as Forcing
from .model._forcing import grain_for_green as grain_for_green
from .model._forcing import make_forcing as make_forcing
from .model._forcing import ramp as ramp
from .model._params import PARAM_NAMES as PARAM_NAMES
from .model._params import SEED_PARAM_NAMES as SEED_PARAM_NAMES
from .model._params import FreeSet as FreeSet
from .model._params import ParameterError as ParameterError
from .model._params import ParameterWarning as ParameterWarning
from .model._params import Params as Params
from .model._params import ParamSpace as ParamSpace
from .model._params import ParamSpec as ParamSpec
from .model._params import load_param_space as load_param_space
from .report._calibration import write_outputs as write_outputs
from .solve._ensemble import simulate_ensemble as simulate_ensemble
from .solve._simulate import STATUS_MESSAGES as STATUS_MESSAGES
from .solve._simulate import Simulation as Simulation
from .solve._simulate import simulate as simulate

try:  # one source for the version: the package metadata (pyproject.toml)
    from importlib.metadata import PackageNotFoundError as _NotFound
    from importlib.metadata import version as _version

    __version__ = _version("regv1_jax")
except _NotFound:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0+unknown"
