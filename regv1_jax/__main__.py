"""``python -m regv1_jax``: the ``regv1`` command."""

import sys

from .cli import main

sys.exit(main())
