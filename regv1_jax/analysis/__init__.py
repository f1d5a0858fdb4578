"""Analyses over the batched engine: the evaluator, quantities of interest, Sobol' and DGSM.

The block bootstrap (``bootstrap_study``) plugs into :func:`map_chunks` with vmapped
staged refits.
"""

from ._bootstrap import BootstrapResult as BootstrapResult
from ._bootstrap import bootstrap_study as bootstrap_study
from ._bootstrap import resample_counts as resample_counts
from ._dgsm import DGSM as DGSM
from ._dgsm import dgsm as dgsm
from ._dgsm import model_unit_fn as model_unit_fn
from ._evaluate import QOI_NONFINITE as QOI_NONFINITE
from ._evaluate import ChunkStore as ChunkStore
from ._evaluate import Evaluation as Evaluation
from ._evaluate import evaluate as evaluate
from ._evaluate import map_chunks as map_chunks
from ._qoi import QoI as QoI
from ._qoi import QoIContext as QoIContext
from ._qoi import make_qoi as make_qoi
from ._sensitivity import DEFAULT_SUBSET as DEFAULT_SUBSET
from ._sensitivity import SobolStudy as SobolStudy
from ._sensitivity import sobol_study as sobol_study
from ._sobol import SobolIndices as SobolIndices
from ._sobol import saltelli_base as saltelli_base
from ._sobol import saltelli_matrix as saltelli_matrix
from ._sobol import sobol_indices as sobol_indices

# isort: split
# Profile likelihood and identifiability (issue 11).
from ._identify import VIF_FLAG as VIF_FLAG
from ._identify import Identifiability as Identifiability
from ._identify import identify_data as identify_data
from ._identify import identify_sample as identify_sample
from ._identify import read_replicates as read_replicates
from ._identify import write_identify as write_identify
from ._profile import CHI2_95 as CHI2_95
from ._profile import DEFAULT_PROFILED as DEFAULT_PROFILED
from ._profile import Profile as Profile
from ._profile import ProfileSetup as ProfileSetup
from ._profile import lr_interval as lr_interval
from ._profile import point_residual_fn as point_residual_fn
from ._profile import profile as profile
from ._profile import profile_grid as profile_grid
from ._profile import setup_from_calibration as setup_from_calibration
