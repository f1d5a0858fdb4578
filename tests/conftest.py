import atexit
import os
import shutil
import tempfile

import jax

# The suite runs on caches of its own, empty at the start (as on a fresh machine) and
# removed at the end: the XLA compilation cache, the trace cache and the CPU kernels that
# the CLI tests fill, never the user's ~/.cache/regv1_jax.  Set once by the first process
# (pytest-xdist workers inherit it).
if "REGV1_TEST_ROOT" not in os.environ:
    _root = tempfile.mkdtemp(prefix="regv1_tests_")
    os.environ["REGV1_TEST_ROOT"] = _root
    atexit.register(shutil.rmtree, _root, True)
os.environ["REGV1_CACHE_DIR"] = os.path.join(os.environ["REGV1_TEST_ROOT"], "xla")
os.environ["REGV1_KERNEL_CACHE"] = os.path.join(os.environ["REGV1_TEST_ROOT"], "kernels")

# Tests run in float64 unless a test asks for float32 explicitly.
jax.config.update("jax_enable_x64", True)
