"""The persistent XLA compilation cache of the ``regv1`` command, and traces it can store.

JAX stores a compiled function on disk only if it holds no host callback.  diffrax checks
its inputs (``t1 - t0`` against ``dt0``, the ``saveat.ts`` order and range) with
``equinox.error_if``; inside a jitted fit those inputs are traced, and equinox's default
(``EQX_ON_ERROR=raise``) turns each check into a ``jax.pure_callback`` that raises on the
host.  Every jitted function that contains a solve then fails JAX's check ("Not writing
persistent cache entry ... because it uses host callbacks") and is compiled again on every
run.  :func:`cacheable_traces` traces with those checks as ``NaN`` outputs instead (the
``EQX_ON_ERROR=nan`` behaviour): a failed check then shows up as a non-finite solve, which
``simulate`` already reports as ``status == NONFINITE``.  Our solves pass ``throw=False``, so no
other runtime error is lost.

The library never touches this on import; the CLI opts in around its computations.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["CACHE_ENV", "NO_CACHE_ENV", "cache_dir", "enable_cache", "cacheable_traces"]

CACHE_ENV = "REGV1_CACHE_DIR"  # where the cache lives (default ~/.cache/regv1_jax/xla)
NO_CACHE_ENV = "REGV1_NO_CACHE"  # set to 1 to switch the persistent cache off

# Store every compiled function that took at least this long (JAX's default, 1 s, would
# leave the many small solves of a run, about 0.2-0.9 s each, to be compiled again).
MIN_COMPILE_SECS = 0.05


def cache_dir() -> Path:
    """The folder of the persistent cache: ``$REGV1_CACHE_DIR`` or ``~/.cache/regv1_jax/xla``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "regv1_jax" / "xla"


def cache_disabled() -> bool:
    """True when ``REGV1_NO_CACHE`` is set to anything but ``""``/``0``/``false``/``no``."""
    return os.environ.get(NO_CACHE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def enable_cache(disabled: bool = False) -> Path | None:
    """Point JAX's persistent compilation cache at :func:`cache_dir`; returns the folder, or
    None when the cache is off (``disabled`` or ``REGV1_NO_CACHE``) or cannot be created.

    A folder that cannot be created is not an error: the run compiles as if the cache were
    off (the caller says so)."""
    import jax

    if disabled or cache_disabled():
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


@contextlib.contextmanager
def cacheable_traces():
    """Trace inside this block with equinox's runtime checks as NaN outputs, not host
    callbacks (see the module docstring), so that XLA's persistent cache can store the
    compiled functions.  A user's own ``EQX_ON_ERROR`` setting is respected.

    Relies on ``equinox._errors.EQX_ON_ERROR``, the module global that ``error_if`` reads
    at trace time; ``tests/test_cli.py`` checks that a traced fit holds no callback, so a
    change in equinox shows up there.
    """
    try:
        from equinox import _errors
    except ImportError:  # pragma: no cover - equinox moved the module
        yield
        return
    old = getattr(_errors, "EQX_ON_ERROR", None)
    switch = old == "raise" and "EQX_ON_ERROR" not in os.environ
    if switch:
        _errors.EQX_ON_ERROR = "nan"
    try:
        yield
    finally:
        if switch:
            _errors.EQX_ON_ERROR = old
