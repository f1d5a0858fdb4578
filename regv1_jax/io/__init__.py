"""Input: observation CSVs, the validation-site table, the site registry and forcing files,
and the plausibility warnings of user inputs."""

from ._checks import observation_warnings as observation_warnings
from ._checks import params_file_warnings as params_file_warnings
from ._checks import year_range_warnings as year_range_warnings
from ._observations import DEPTHS as DEPTHS
from ._observations import EXTRA_COLUMNS as EXTRA_COLUMNS
from ._observations import FORCING_COLUMNS as FORCING_COLUMNS
from ._observations import GAUGE_COLUMNS as GAUGE_COLUMNS
from ._observations import OBSERVED as OBSERVED
from ._observations import OPTIONAL_COLUMNS as OPTIONAL_COLUMNS
from ._observations import REQUIRED_COLUMNS as REQUIRED_COLUMNS
from ._observations import DataError as DataError
from ._observations import Observations as Observations
from ._observations import convert_gauge as convert_gauge
from ._observations import load_site as load_site
from ._observations import read_observations as read_observations
from ._sites import FORCING_RULE as FORCING_RULE
from ._sites import Site as Site
from ._sites import get_site as get_site
from ._sites import read_forcing_csv as read_forcing_csv
from ._sites import site_forcing as site_forcing
from ._sites import site_registry as site_registry
from ._tables import load_sites_registry as load_sites_registry
from ._tables import parse_range as parse_range
from ._tables import read_validation_sites as read_validation_sites
