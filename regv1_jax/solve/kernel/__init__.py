"""The CPU ensemble kernel: the model's equations emitted as C++ (``_emit``), built and
registered with the XLA FFI (``_build``); templates in ``driver.cc`` and ``vmath.h``."""

from ._build import CXXFLAGS as CXXFLAGS
from ._build import LDFLAGS as LDFLAGS
from ._build import available as available
from ._build import kernel_source as kernel_source
from ._build import rk4_observed as rk4_observed
from ._build import target as target
from ._build import targets as targets
from ._build import vector_math as vector_math
from ._emit import BLOCK as BLOCK
from ._emit import GROUPS as GROUPS
from ._emit import N_FORCING as N_FORCING
from ._emit import Emitter as Emitter
from ._emit import SegmentEmitter as SegmentEmitter
from ._emit import initial_source as initial_source
from ._emit import observation_source as observation_source
from ._emit import rhs_source as rhs_source
