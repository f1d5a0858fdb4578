"""regv1_jax: a differentiable V-SOM-theta solver for ecosystem regeneration.

Users import from here; every other module is private and free to change.
"""

from ._ensemble import simulate_ensemble as simulate_ensemble
from ._equilibria import Bifurcation as Bifurcation
from ._equilibria import Climate as Climate
from ._equilibria import Equilibria as Equilibria
from ._equilibria import bifurcation as bifurcation
from ._equilibria import cover_rate as cover_rate
from ._equilibria import equilibria as equilibria
from ._forcing import Forcing as Forcing
from ._forcing import grain_for_green as grain_for_green
from ._forcing import make_forcing as make_forcing
from ._forcing import ramp as ramp
from ._model import Layout as Layout
from ._params import PARAM_NAMES as PARAM_NAMES
from ._params import SEED_PARAM_NAMES as SEED_PARAM_NAMES
from ._params import FreeSet as FreeSet
from ._params import ParameterError as ParameterError
from ._params import Params as Params
from ._params import ParamSpace as ParamSpace
from ._params import ParamSpec as ParamSpec
from ._params import load_param_space as load_param_space
from ._paths import data_path as data_path
from ._solve import STATUS_MESSAGES as STATUS_MESSAGES
from ._solve import Simulation as Simulation
from ._solve import simulate as simulate

__version__ = "0.1.0"
