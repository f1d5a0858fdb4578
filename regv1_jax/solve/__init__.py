"""Solving: solver objects, simulate and its annual outputs, the batched ensemble (with the
CPU kernel), the kernel-backed RK4 solver and the scipy reference."""

from ._ensemble import SMALL_BATCH as SMALL_BATCH
from ._ensemble import bucket_size as bucket_size
from ._ensemble import chunk_size as chunk_size
from ._ensemble import ensemble_hlo as ensemble_hlo
from ._ensemble import simulate_ensemble as simulate_ensemble
from ._kernel_rk4 import KernelRK4 as KernelRK4
from ._kernel_rk4 import kernel_fields as kernel_fields
from ._kernel_rk4 import kernel_names as kernel_names
from ._kernel_rk4 import solver_kernels as solver_kernels
from ._reference import OUTPUT_KEYS as OUTPUT_KEYS
from ._reference import solve_scipy as solve_scipy
from ._reference import solve_scipy_grid as solve_scipy_grid
from ._simulate import FIELDS as FIELDS
from ._simulate import MAX_STEPS as MAX_STEPS
from ._simulate import NONFINITE as NONFINITE
from ._simulate import OBSERVED as OBSERVED
from ._simulate import OK as OK
from ._simulate import SOLVER_FAILED as SOLVER_FAILED
from ._simulate import STATUS_MESSAGES as STATUS_MESSAGES
from ._simulate import Simulation as Simulation
from ._simulate import assemble as assemble
from ._simulate import observe_year as observe_year
from ._simulate import simulate as simulate
from ._simulate import simulate_trace_count as simulate_trace_count
from ._simulate import solve_grid as solve_grid
from ._simulate import with_forcing as with_forcing
from ._solvers import ADJOINTS as ADJOINTS
from ._solvers import METHODS as METHODS
from ._solvers import RK4 as RK4
from ._solvers import AbstractSolver as AbstractSolver
from ._solvers import Diffrax as Diffrax
from ._solvers import rk4_grid as rk4_grid
from ._solvers import solver_from as solver_from
