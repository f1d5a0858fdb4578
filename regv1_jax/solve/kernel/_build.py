"""Build, cache and call the ensemble kernel: the C++ driver filled with the emitted model.

The C++ driver (``driver.cc``, with the vector math of ``vmath.h`` pasted in at ``@VMATH@``;
both are templates whose ``@NAME@`` fields this module fills) runs RK4 over blocks of
``GROUPS`` SIMD registers of members (64 float32 / 32 float64) with the batch innermost
(``#pragma omp simd``; the register-wide groups interleaved, so four independent dependency
chains are in flight), one pass per evaluation with the block's state in L1, the four stage
updates fused into the evaluations (the derivative never leaves registers; stage inputs only
for components the right-hand side reads).  exp and log are inlined polynomials (a libmvec
call spills every register).  The rest of the batch runs in blocks of one register (B = 1
computes 16 lanes), blocks spread over OpenMP threads.  At each year's end it computes the
annual outputs and writes them straight into the result arrays of ``FIELDS`` (member,
year[, column]), so no state grid is written and XLA does no pass over the outputs; it
reports which members stayed finite (NaN outputs for the others) and skips the members past
``nvalid`` (bucket padding).  It is built once per (model, dtype, machine) with the system
C++ compiler (compiled with -ffast-math, linked without it), cached on disk
(``$REGV1_KERNEL_CACHE``, default ``~/.cache/regv1_jax/kernels``; the key is the generated
source, the compiler version, the flags and the CPU), and called through the XLA FFI;
:func:`available` says whether that worked (no compiler: XLA path).

Where the time goes (AMD EPYC Zen 4, 2 cores, 2026-11): the evaluation is bound by vector
arithmetic (AVX-512 runs at half width on Zen 4), ~300 vector operations per evaluation and
register group in float32, of which exp/log/sqrt/division are about half.

Forward only (no gradients); ``tests/test_ensemble.py`` checks member by member that its
outputs equal ``simulate(method="rk4")``'s.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..._traces import package_source_hash
from ...model import Layout
from .._simulate import FIELDS, OBSERVED
from ._emit import BLOCK, GROUPS, initial_source, observation_source, rhs_source

__all__ = ["available", "target", "targets", "rk4_observed", "vector_math", "kernel_source",
           "CXXFLAGS", "LDFLAGS"]

_HERE = Path(__file__).resolve().parent
# The C++ templates, read once: the driver and the vector math it inlines.
_DRIVER = (_HERE / "driver.cc").read_text()
_VMATH = (_HERE / "vmath.h").read_text()

CXXFLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c++17")
# Linked in a second step without -ffast-math: GCC (before 13) links crtfastmath.o into a
# -ffast-math shared library, and loading it would switch the whole process to
# flush-to-zero (numpy and XLA would then lose every subnormal number).
LDFLAGS = ("-shared", "-fopenmp")


def kernel_source(p_def, layout, dtype, jvp: bool = False) -> str:
    """The complete C++ source of the kernel for a ``Params`` treedef, layout and dtype.

    ``jvp``: the kernel of the forward sensitivity system (the same RK4 driver on the state
    ``(y, dy)`` with parameters ``(p, dp)``, from ``jax.jvp`` of the model's functions):
    its results are the ``FIELDS`` and then their tangents along ``dp``.  RK4 applied to the
    sensitivity system is the derivative of the RK4 solution (explicit Runge-Kutta
    schemes commute with differentiation), so the tangents equal ``jax.jvp`` of
    ``simulate(method="rk4")`` up to rounding."""
    dtype = np.dtype(dtype)
    parts = rhs_source(p_def, layout, dtype, jvp=jvp)
    parts.pop("equations")
    parts.update(observation_source(p_def, layout, dtype, jvp=jvp))
    parts.update(initial_source(p_def, layout, dtype, jvp=jvp))
    ctype, utype, ffi_t = (("float", "uint32_t", "F32") if dtype == np.float32
                           else ("double", "uint64_t", "F64"))
    # where each OBSERVED output goes: result array (FIELDS) and column
    place = {key: (r, c) for r, (_, keys) in enumerate(FIELDS) for c, key in enumerate(keys)}
    field, col = zip(*(place[key] for key in OBSERVED))
    widths = [len(keys) for _, keys in FIELDS]
    if jvp:  # the tangent of output k goes to the same column of result array NR + FIELD[k]
        field = field + tuple(f + len(FIELDS) for f in field)
        col, widths = col + col, widths + widths
    src = _DRIVER
    for k, v in dict(VMATH=_VMATH, CTYPE=ctype, UTYPE=utype, W=BLOCK[dtype],
                     WS=64 // dtype.itemsize, GROUPS=GROUPS,
                     D=layout.size * (2 if jvp else 1), FFI=ffi_t,
                     NR=len(widths), FIELD=", ".join(map(str, field)),
                     COL=", ".join(map(str, col)),
                     WIDTH=", ".join(map(str, widths)), **parts).items():
        src = src.replace(f"@{k}@", str(v))
    return src


def _cache_dir() -> Path:
    root = os.environ.get("REGV1_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "regv1_jax", "kernels")
    return Path(root)


def _cpu_tag() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


@functools.cache
def _compiler() -> tuple[str, str] | None:
    """The C++ compiler and its version text (None: no compiler)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return None
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return cxx, version


def _setting() -> str:
    """Everything besides the source that a build depends on."""
    comp = _compiler()
    return "\0".join([comp[1] if comp else "", " ".join(CXXFLAGS + LDFLAGS), _cpu_tag(),
                      jax.ffi.include_dir()])


@functools.cache
def _build(src: str) -> str | None:
    """Compile ``src`` (cached on disk by content, compiler and CPU); the target name."""
    comp = _compiler()
    if comp is None:
        return None
    cxx = comp[0]
    key = hashlib.sha256("\0".join([src, _setting()]).encode()).hexdigest()[:20]
    lib = _cache_dir() / f"rk4_{key}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            cpp = Path(tmp) / "rk4.cc"
            cpp.write_text(src)
            tmp_lib = Path(tmp) / "rk4.so"
            obj = Path(tmp) / "rk4.o"
            res = subprocess.run([cxx, *CXXFLAGS, "-I", jax.ffi.include_dir(), "-c", str(cpp),
                                  "-o", str(obj)], capture_output=True, text=True, timeout=300)
            if res.returncode == 0:
                res = subprocess.run([cxx, *LDFLAGS, str(obj), "-o", str(tmp_lib)],
                                     capture_output=True, text=True, timeout=300)
            if res.returncode != 0:
                warnings.warn("regv1_jax: building the RK4 ensemble kernel failed; using the "
                              f"XLA path.\n{res.stderr[-2000:]}", stacklevel=3)
                return None
            os.replace(tmp_lib, lib)  # atomic: concurrent builders agree
    return _load(lib, key)


def _load(lib: Path, key: str) -> str:
    """Load a built kernel and register its FFI target; the target name."""
    name = f"regv1_rk4_{key}"
    if name not in _LIBS:
        handle = ctypes.CDLL(str(lib))
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handle.regv1_rk4), platform="cpu")
        _LIBS[name] = handle
    return name


_LIBS: dict = {}


def target(params, layout: Layout, dtype, jvp: bool = False) -> str | None:
    """The FFI target name of the kernel for this model and dtype (built on first use;
    ``jvp``: the forward sensitivity kernel).

    ``params``: a ``Params`` (any leaf shapes) or its treedef.  ``None`` when the kernel
    cannot be built (no compiler, ``REGV1_NO_KERNEL`` set, an unknown primitive).
    """
    return targets(params, layout, dtype, (jvp,))[0]


def targets(params, layout: Layout, dtype, jvps=(False, True)) -> list[str | None]:
    """:func:`target` of each of ``jvps`` (the value kernel, the tangent kernel); the ones
    not built yet compile at the same time (one compiler process each)."""
    if os.environ.get("REGV1_NO_KERNEL"):
        return [None] * len(jvps)
    if not isinstance(params, jax.tree_util.PyTreeDef):
        params = jax.tree_util.tree_structure(params)
    dtype = np.dtype(dtype)
    todo = [j for j in dict.fromkeys(jvps) if (params, layout, dtype, j) not in _TARGETS]
    found = {j: _indexed(params, layout, dtype, j) for j in todo}
    sources = {}
    for j in todo:
        if found[j] is None:
            try:
                sources[j] = kernel_source(params, layout, dtype, j)
            except ValueError as e:  # a primitive the generator does not know
                warnings.warn(f"regv1_jax: no RK4 kernel for this model ({e}); using the "
                              "XLA path", stacklevel=3)
                found[j] = ""
    if sources:
        with concurrent.futures.ThreadPoolExecutor(len(sources)) as pool:
            built = dict(zip(sources, pool.map(_build, sources.values())))
        for j, name in built.items():
            found[j] = name or ""
            if name:
                try:
                    _index_path(params, layout, dtype, j).write_text(
                        name.removeprefix("regv1_rk4_"))
                except OSError:
                    pass
    for j in todo:
        _TARGETS[(params, layout, dtype, j)] = found[j] or None
    return [_TARGETS[(params, layout, dtype, j)] for j in jvps]


_TARGETS: dict = {}


def _index_path(p_def, layout, dtype, jvp) -> Path:
    # Generating the source traces the model (~0.25 s): an index by the package's sources
    # (and the build setting) finds a kernel built earlier without it.
    return _cache_dir() / ("index_" + hashlib.sha256("\0".join(
        [package_source_hash(), repr(p_def), repr(layout), str(dtype), str(jvp),
         _setting()]).encode()).hexdigest()[:20])


def _indexed(p_def, layout, dtype, jvp) -> str | None:
    """The target of a kernel built earlier (found by the index), else None."""
    try:
        key = _index_path(p_def, layout, dtype, jvp).read_text().strip()
    except OSError:
        return None
    lib = _cache_dir() / f"rk4_{key}.so"
    if _compiler() is not None and lib.exists():
        return _load(lib, key)
    return None


def available(params, layout: Layout, dtype) -> bool:
    return target(params, layout, dtype) is not None


def rk4_observed(name: str, prm, forcing_values, steps_per_year: int, threads: int,
                 nvalid=None, jvp: bool = False):
    """Call the kernel: ``prm (NP, B)`` (the parameter leaves, stacked), ``forcing_values
    (NY, 4)`` (rainfall, intensity, psi_plant, psi_eng of each year, shared by every member;
    or ``(NY, 4, B)``, a forcing per member)
    -> ``(fields, finite)``: ``fields`` maps each of ``FIELDS``' names to its ``(B, NY)``
    (or ``(B, NY, k)``) array of annual outputs of ``observe_year``, NaN for a member whose
    state did not stay finite; ``finite (B,)`` (int32) is 1 where it did.  The kernel
    computes the initial state itself (``initial_terms``) and writes the outputs in their
    final layout: no state grid, no XLA pass over the outputs.

    ``nvalid`` (a traced integer, default ``B``): members from there on are padding and are
    not solved (zero outputs, ``finite`` 1).

    ``jvp`` (``name`` a ``target(..., jvp=True)``): ``prm`` is ``(2 NP, B)``, the parameters
    and then their tangents; ``fields`` holds the outputs and, under ``"d" + field``, their
    tangents.
    """
    B = prm.shape[1]
    NY = forcing_values.shape[0]
    nvalid = jnp.asarray(B if nvalid is None else nvalid, jnp.int32).reshape(1)
    names = [f for f, _ in FIELDS] + (["d" + f for f, _ in FIELDS] if jvp else [])
    widths = [len(keys) for _, keys in FIELDS] * (2 if jvp else 1)
    out = tuple(jax.ShapeDtypeStruct((B, NY) + ((k,) if k > 1 else ()), prm.dtype)
                for k in widths) + (jax.ShapeDtypeStruct((B,), jnp.int32),)
    *fields, finite = jax.ffi.ffi_call(name, out)(
        prm, forcing_values, nvalid, steps=np.int64(steps_per_year), threads=np.int64(threads))
    return dict(zip(names, fields)), finite


def vector_math(name: str, op: str, x: np.ndarray) -> np.ndarray:
    """The kernel's own ``exp``, ``log``, ``log_normal`` (its log where the argument is known
    to be NaN, +inf or at least the smallest normal number) or ``inv8rt`` (``x ** -1/8``,
    same domain) of the array ``x`` (its dtype), for tests against numpy; ``name``: a target
    from :func:`target`."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    f = _LIBS[name].regv1_vmath
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    f(dict(exp=0, log=1, log_normal=2, inv8rt=3)[op], x.ctypes.data, y.ctypes.data, x.size)
    return y
