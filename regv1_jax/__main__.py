"""``python -m regv1_jax``: the ``regv1`` command."""

import sys

from .cli._main import main

sys.exit(main())
