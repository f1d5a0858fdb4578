"""The ``regv1`` command line (one module per command; shared helpers in ``_common``)."""

from ._main import SIM_COLUMNS as SIM_COLUMNS
from ._main import main as main
