"""The generated RK4 kernel's own pieces: its exp and log against numpy, its build.

The kernel's solves are checked against ``simulate(method="rk4")`` in ``test_ensemble.py``;
these tests pin the math functions it inlines (in ulps, over the whole range, special values
included) and that loading it leaves the process's floating-point mode alone.
"""

import re
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import loess

from regv1_jax.model import Layout
from regv1_jax.solve import kernel as _kernel

DTYPES = (np.float32, np.float64)


def _target(dtype):
    _, p = loess(jnp.dtype(dtype))
    name = _kernel.target(p, Layout(), dtype)
    if name is None:
        pytest.skip("no C++ compiler: the kernel is not built")
    return name


def _ulps(got, want, dtype):
    """|got - want| in units of the spacing of ``dtype`` at ``want`` (``want`` exact)."""
    want = np.asarray(want, np.longdouble)
    spacing = np.spacing(np.abs(want).astype(dtype)).astype(np.longdouble)
    return np.abs(got.astype(np.longdouble) - want) / spacing


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_within_two_ulp(dtype):
    name = _target(dtype)
    fi = np.finfo(dtype)
    lo = np.log(float(fi.smallest_subnormal)) + 1.0
    x = np.concatenate([np.exp(np.linspace(lo, np.log(float(fi.max)), 100_003)),
                        np.linspace(0.5, 2.0, 50_001)]).astype(dtype)
    x = x[(x > 0) & np.isfinite(x)]
    want = np.log(x.astype(np.longdouble))
    assert _ulps(_kernel.vector_math(name, "log", x), want, dtype).max() <= 2.0
    # the variant the generator uses for log(max(y, c)), c a normal literal: normal inputs
    normal = x >= fi.tiny
    got = _kernel.vector_math(name, "log_normal", x[normal])
    assert _ulps(got, want[normal], dtype).max() <= 2.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_within_one_ulp_and_right_at_the_ends(dtype):
    name = _target(dtype)
    fi = np.finfo(dtype)
    top = float(np.log(np.longdouble(fi.max)))
    x = np.linspace(-top - 40, top + 5, 200_001).astype(dtype)
    got = _kernel.vector_math(name, "exp", x)
    want = np.exp(x.astype(np.longdouble))
    normal = (want >= fi.tiny) & (want <= fi.max)
    assert _ulps(got[normal], want[normal], dtype).max() <= 1.5
    assert np.all(np.isinf(got[want > fi.max]))
    # subnormal results: within one smallest subnormal; below half of it, zero
    sub = want < fi.tiny
    err = np.abs(got[sub].astype(np.longdouble) - want[sub]) / float(fi.smallest_subnormal)
    assert err.max() <= 1.0 and np.all(got[sub] >= 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values(dtype):
    name = _target(dtype)
    x = np.array([0.0, -0.0, -1.0, np.inf, -np.inf, np.nan, np.finfo(dtype).tiny / 8], dtype)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(_kernel.vector_math(name, "log", x), np.log(x))
    x = np.array([np.inf, np.nan, np.finfo(dtype).tiny, 1.0], dtype)
    np.testing.assert_array_equal(_kernel.vector_math(name, "log_normal", x), np.log(x))
    x = np.array([0.0, -np.inf, np.inf, np.nan, 1e4, -1e4], dtype)
    np.testing.assert_array_equal(_kernel.vector_math(name, "exp", x),
                                  np.array([1.0, 0.0, np.inf, np.nan, np.inf, 0.0], dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_inverse_eighth_root_within_one_and_a_half_ulp(dtype):
    """``x ** (-1/8)`` by a bit seed and third-order steps (the model's smooth cap, where the
    generator proves x normal): over every normal x, and inf -> 0, NaN -> NaN."""
    name = _target(dtype)
    fi = np.finfo(dtype)
    x = np.concatenate([np.exp(np.linspace(np.log(float(fi.tiny)), np.log(float(fi.max)),
                                           200_003)),
                        np.linspace(1.0, 256.0, 100_001)]).astype(dtype)
    x = x[(x >= fi.tiny) & np.isfinite(x)]
    want = x.astype(np.longdouble) ** np.longdouble(-0.125)
    assert _ulps(_kernel.vector_math(name, "inv8rt", x), want, dtype).max() <= 1.5
    x = np.array([np.inf, np.nan, 1.0, 256.0], dtype)
    np.testing.assert_array_equal(_kernel.vector_math(name, "inv8rt", x),
                                  np.array([0.0, np.nan, 1.0, 0.5], dtype))


def test_eighth_root_of_a_proven_normal_value_takes_the_iteration():
    """``sqrt(sqrt(1 / sqrt(v)))`` becomes ``vinv8rt(v)`` where ``v`` is a normal literal
    plus a value known to be >= 0 (the model's ``1 + raw^8``); of an unproven ``v`` (could
    be 0, subnormal or negative) it stays three square roots and a division."""
    def f(x):
        x4 = (x * x) * (x * x)
        cap = jnp.sqrt(jnp.sqrt(1.0 / jnp.sqrt(1.0 + x4 * x4)))
        free = jnp.sqrt(jnp.sqrt(1.0 / jnp.sqrt(x)))
        neg = jnp.sqrt(jnp.sqrt(1.0 / jnp.sqrt(1.0 + x)))  # 1 + x can be anything
        return cap + free + neg

    closed = jax.make_jaxpr(f)(jax.ShapeDtypeStruct((), jnp.float64))
    em = _kernel.Emitter()
    em.jaxpr(closed.jaxpr, closed.consts, [(2, "X[i]", True)])
    src = "\n".join(em.lines[2])
    assert src.count("vinv8rt(") == 1 and src.count("std::sqrt(") == 2 + 3 + 3, src
    _, p = loess(jnp.float64)
    rhs = _kernel.rhs_source(jax.tree_util.tree_structure(p), Layout(), jnp.float64)["RHS"]
    assert rhs.count("vinv8rt(") == 1  # the model's cap


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_evaluation_loop_is_vectorized(dtype, tmp_path):
    """GCC vectorizes both lane loops of ``rhs`` (the interleaved full block and the
    one-register tail) in all four RK stages.  A body that it cannot if-convert (a select on
    an integer compare in vinv8rt did this once) leaves a loop scalar without any error: the
    tail blocks, so B = 1, took 3x as long."""
    _target(dtype)
    cxx = shutil.which("g++")
    if cxx is None or "clang" in subprocess.run([cxx, "--version"], capture_output=True,
                                                text=True).stdout.lower():
        pytest.skip("needs GCC's -fopt-info")
    _, p = loess(jnp.dtype(dtype))
    src = _kernel.kernel_source(jax.tree_util.tree_structure(p), Layout(), dtype)
    cc = tmp_path / "rk4.cc"
    cc.write_text(src)
    res = subprocess.run([cxx, *_kernel.CXXFLAGS, "-I", jax.ffi.include_dir(), "-c", str(cc),
                          "-o", str(tmp_path / "rk4.o"), "-fopt-info-vec-all"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = src.splitlines()
    start = next(k for k, line in enumerate(lines) if "static inline void rhs" in line)
    end = next(k for k in range(start, len(lines)) if "static inline void load" in lines[k])
    loops = [k + 1 for k in range(start, end)
             if lines[k].strip().startswith("for (int i = 0; i < W")]
    assert len(loops) == 2
    for line in loops:  # GCC reports a loop at its line or the next (its body's start)
        at = rf"rk4\.cc:({line}|{line + 1}):\d+:"
        done = re.findall(at + " optimized: loop vectorized", res.stderr)
        missed = re.findall(at + " missed: couldn't vectorize loop", res.stderr)
        assert len(done) == 4 and not missed, (line, lines[line - 1], done, missed)


def test_loading_the_kernel_keeps_subnormals():
    """The kernel is compiled with -ffast-math but linked without it: GCC's crtfastmath.o
    would set flush-to-zero for the whole process when the library loads."""
    for dtype in DTYPES:
        _target(dtype)
    tiny = np.array([5e-324, 1e-310])
    assert np.all(tiny * 1.0 == tiny) and np.all(tiny > 0)
    assert np.spacing(np.float64(1e-304)) > 0


def test_log_of_a_guarded_argument_skips_the_subnormal_cases():
    """``log(max(y, c))`` with a normal literal ``c`` (the model's guard) gets the cheaper
    log; a log of an unguarded value, or guarded by a subnormal ``c``, the full one."""
    def f(x):
        return (jnp.log(jnp.maximum(x, 1e-30)) + jnp.log(x)
                + jnp.log(jnp.maximum(x, 1e-320)))

    closed = jax.make_jaxpr(f)(jax.ShapeDtypeStruct((), jnp.float64))
    em = _kernel.Emitter()
    em.jaxpr(closed.jaxpr, closed.consts, [(2, "X[i]", True)])
    src = "\n".join(em.lines[2])
    assert src.count("vlog<true>(") == 1 and src.count("vlog(") == 2, src
    _, p = loess(jnp.float64)
    rhs = _kernel.rhs_source(jax.tree_util.tree_structure(p), Layout(), jnp.float64)["RHS"]
    assert rhs.count("vlog<true>(") == 2 and "vlog(" not in rhs  # the model's two logs


@pytest.mark.parametrize("case", ["params", "forcing", "steps"])
def test_kernel_call_rejects_bad_shapes(case):
    """The FFI handler checks what it is given (it would otherwise read or write out of
    bounds): the wrong number of parameter rows or forcing columns, odd steps per year."""
    name = _target(np.float64)
    _, p = loess(jnp.float64)
    prm = jnp.stack([jnp.full((4,), x) for x in jax.tree_util.tree_leaves(p)])
    fv = jnp.ones((3, 4))
    steps = 12
    if case == "params":
        prm = prm[1:]
    elif case == "forcing":
        fv = jnp.ones((3, 3))
    else:
        steps = 7
    with pytest.raises(Exception, match="bad shapes or steps"):
        jax.block_until_ready(_kernel.rk4_observed(name, prm, fv, steps, 1))
