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

# XLA's persistent compilation cache on that folder for the library tests too (the CLI
# tests switch it on themselves): the two workers share every compiled function that holds
# no host callback, as a user's repeated runs do.
from regv1_jax.cli import enable_cache  # noqa: E402

enable_cache()


# The longest files first (pytest-xdist's --dist loadfile hands out whole files in
# collection order; addopts sets --no-loadscope-reorder, whose default ordering by number of
# tests would leave a long one-test file such as test_types.py to the end, on one worker
# while the other idles).  Seconds per file, summed over its tests, on 2 cores (Intel
# Xeon, 2026-12-04); the order, not the numbers, matters, and files not listed follow.
LONGEST_FIRST = ("test_solve.py", "test_model_v2.py", "test_kernel_rk4.py", "test_science.py",
                 "test_ensemble.py", "test_cli.py", "test_screen.py", "test_reference.py",
                 "test_sobol.py", "test_types.py", "test_calibrate.py", "test_kernel.py",
                 "test_calibrate_sites.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
