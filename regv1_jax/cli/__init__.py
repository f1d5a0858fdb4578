"""The ``regv1`` command line (one module per command; shared helpers in ``_common``)."""

from ._cache import cache_dir as cache_dir
from ._cache import cacheable_traces as cacheable_traces
from ._cache import enable_cache as enable_cache
from ._main import SIM_COLUMNS as SIM_COLUMNS
from ._main import main as main
