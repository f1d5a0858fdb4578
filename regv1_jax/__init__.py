"""regv1_jax: a differentiable V-SOM-theta solver for ecosystem regeneration.

Users import from here, or from the layer namespaces below it (``regv1_jax.model``,
``.io``, ``.solve``, ``.fit``, ``.analysis``, ``.report``, ``.cli``: each re-exports its
own API; the ``_private`` modules inside them are free to change).  The layers import only
downwards, in that order.
"""

from . import fit as fit
from . import io as io
from . import model as model
from . import solve as solve
from . import status as status
from ._paths import data_dir as data_dir
from ._paths import data_path as data_path
from .fit import LBFGS as LBFGS
from .fit import SEED_STAGES as SEED_STAGES
from .fit import STAGE_STATUS as STAGE_STATUS
from .fit import Adam as Adam
from .fit import CalibrationConfig as CalibrationConfig
from .fit import CalibrationError as CalibrationError
from .fit import FitSettings as FitSettings
from .fit import LevenbergMarquardt as LevenbergMarquardt
from .fit import SiteCalibration as SiteCalibration
from .fit import Stage as Stage
from .fit import StageResult as StageResult
from .fit import Targets as Targets
from .fit import calibrate_site as calibrate_site
from .fit import calibrate_stages as calibrate_stages
from .fit import fit_metrics as fit_metrics
from .fit import load_config as load_config
from .fit import local_identifiability as local_identifiability
from .fit import make_targets as make_targets
from .fit import run_stage as run_stage
from .io import DataError as DataError
from .io import Observations as Observations
from .io import convert_gauge as convert_gauge
from .io import get_site as get_site
from .io import load_site as load_site
from .io import read_forcing_csv as read_forcing_csv
from .io import read_observations as read_observations
from .io import site_forcing as site_forcing
from .model import PARAM_NAMES as PARAM_NAMES
from .model import SEED_PARAM_NAMES as SEED_PARAM_NAMES
from .model import Bifurcation as Bifurcation
from .model import Climate as Climate
from .model import Equilibria as Equilibria
from .model import Forcing as Forcing
from .model import FreeSet as FreeSet
from .model import Layout as Layout
from .model import ParameterError as ParameterError
from .model import ParameterWarning as ParameterWarning
from .model import Params as Params
from .model import ParamSpace as ParamSpace
from .model import ParamSpec as ParamSpec
from .model import bifurcation as bifurcation
from .model import cover_rate as cover_rate
from .model import equilibria as equilibria
from .model import grain_for_green as grain_for_green
from .model import load_param_space as load_param_space
from .model import make_forcing as make_forcing
from .model import ramp as ramp
from .solve import RK4 as RK4
from .solve import STATUS_MESSAGES as STATUS_MESSAGES
from .solve import Diffrax as Diffrax
from .solve import Simulation as Simulation
from .solve import simulate as simulate
from .solve import simulate_ensemble as simulate_ensemble
from .status import RESULTS as RESULTS

try:  # one source for the version: the package metadata (pyproject.toml)
    from importlib.metadata import PackageNotFoundError as _NotFound
    from importlib.metadata import version as _version

    __version__ = _version("regv1_jax")
except _NotFound:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0+unknown"


# The upper layers load on first use (``regv1_jax.analysis``, ``regv1_jax.report``,
# ``regv1_jax.cli``, ``regv1_jax.write_outputs``): a model run or a fit does not pay for them.
_LAZY = {"analysis": None, "report": None, "cli": None, "write_outputs": "report"}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'regv1_jax' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    value = getattr(module, name) if _LAZY[name] else module
    globals()[name] = value
    return value
