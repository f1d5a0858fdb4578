"""A persistent cache of *traced* functions (``jax.export``), beside XLA's cache of compiled
ones: a warm process runs a big jitted function without tracing it again.

XLA's persistent compilation cache skips compiling, not tracing: a process that calls the
staged fit traces it again (~1 s of Python through the solver, the optimiser and ``vmap``)
before it can find the compiled program.  :func:`cached` serializes the traced function
(``jax.export``, StableHLO) on its first call and deserializes it in later processes, keyed
by everything the trace depends on: the function, the static part of its arguments
(pickled: modules of configuration), the shapes and dtypes of its arrays, the package's
source files, the jax version, the backend and the precision.  The exported program calls
the CPU kernels by name; their targets are registered before a cached program runs.

Off unless a caller turns it on (:func:`enable`; the ``regv1`` command does, next to the
compilation cache, and ``--no-cache`` / ``REGV1_NO_CACHE`` turn both off).  Called under a
transformation (traced arguments: ``jit``, ``vmap``, ``grad``) a function runs as usual:
the cache serves top-level calls only.  A cache entry that cannot be read is ignored (the
function is traced again and the entry rewritten).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

__all__ = ["enable", "disable", "enabled", "cached", "cache_folder", "package_source_hash"]

_STATE: dict = {"folder": None}
_LOADED: dict = {}  # key -> (call, out template), this process's deserialized programs
_NEEDS: list = []  # kernels a program calls: (callback that registers them) per program


def enable(folder: str | Path) -> None:
    """Serve :func:`cached` functions from ``folder`` (created when needed)."""
    _STATE["folder"] = Path(folder)


def disable() -> None:
    _STATE["folder"] = None


def enabled() -> bool:
    return _STATE["folder"] is not None


def cache_folder() -> Path | None:
    return _STATE["folder"]


@functools.cache
def package_source_hash() -> str:
    """The package's source files (a change of any invalidates every entry)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for p in sorted(root.rglob("*")):
        if p.suffix in (".py", ".cc", ".h") and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _key(name: str, static, leaves) -> str:
    h = hashlib.sha256()
    for part in (name, package_source_hash(), jax.__version__, jax.default_backend(),
                 str(jax.config.read("jax_enable_x64")),
                 repr([(np.shape(x), str(np.asarray(x).dtype) if not hasattr(x, "dtype")
                        else str(x.dtype)) for x in leaves])):
        h.update(part.encode())
        h.update(b"\0")
    h.update(pickle.dumps(static))
    return h.hexdigest()[:32]


def cached(fn, name: str, *args, kernels=()):
    """``fn(*args)``, through the trace cache when it is on and no argument is traced.

    ``fn``: a function of pytrees (arrays and static configuration); ``name``: its stable
    name in the cache key; ``kernels``: callables that register the CPU kernel targets the
    traced program may call and return their names (run before the program is exported
    or called).
    """
    folder = _STATE["folder"]
    if folder is None:
        return fn(*args)
    dyn, static = eqx.partition(args, eqx.is_array)
    leaves, dyn_def = jax.tree_util.tree_flatten(dyn)
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return fn(*args)
    try:
        key = _key(name, static, leaves)
    except (pickle.PicklingError, TypeError, AttributeError):
        return fn(*args)
    if key not in _LOADED:
        _LOADED[key] = _load(folder, key, kernels) or _export(folder, key, fn, static,
                                                              dyn_def, leaves, kernels)
    call, template = _LOADED[key]
    out = call(*leaves)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), out)


def _register(kernels) -> list[str]:
    return sorted({n for k in kernels for n in (k() or ()) if n})


def _load(folder: Path, key: str, kernels):
    bin_path, meta_path = folder / f"{key}.bin", folder / f"{key}.pkl"
    try:
        template = pickle.loads(meta_path.read_bytes())
        exported = jax.export.deserialize(bytearray(bin_path.read_bytes()))
    except (OSError, ValueError, pickle.UnpicklingError, EOFError, AttributeError):
        return None
    _register(kernels)
    return jax.jit(exported.call), template


def _export(folder: Path, key: str, fn, static, dyn_def, leaves, kernels):
    out_def = []

    def flat(*xs):
        out = fn(*eqx.combine(jax.tree_util.tree_unflatten(dyn_def, list(xs)), static))
        out_leaves, tree = jax.tree_util.tree_flatten(out)
        out_def.append((tree, out_leaves))
        return out_leaves

    targets = _register(kernels)
    exported = jax.export.export(jax.jit(flat), disabled_checks=[
        jax.export.DisabledSafetyCheck.custom_call(t) for t in targets])(
        *[jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in leaves])
    tree, out_leaves = out_def[-1]
    template = jax.tree_util.tree_unflatten(
        tree, [jax.ShapeDtypeStruct(np.shape(x), x.dtype) for x in out_leaves])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}"
        tmp.with_suffix(".bin").write_bytes(exported.serialize())
        tmp.with_suffix(".pkl").write_bytes(pickle.dumps(template))
        os.replace(tmp.with_suffix(".bin"), folder / f"{key}.bin")
        os.replace(tmp.with_suffix(".pkl"), folder / f"{key}.pkl")
    except OSError:
        pass  # an unwritable cache is no error: the program still runs
    return jax.jit(exported.call), template
