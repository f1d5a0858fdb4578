"""A CPU kernel for the forward RK4 ensemble, generated from the model's own functions.

XLA:CPU has no multi-output loop fusion: a right-hand side of ~15 components compiles to
~24 loop kernels (one full pass over the batch each), so the fused XLA ensemble runs at a
third of what the CPU does.  This module writes the model once more, but *mechanically*: it
traces ``drivers`` + ``rate_terms`` (the right-hand side), ``initial_terms`` (the initial
state, its bisection a counted loop) and ``observe_year`` (the annual outputs) on scalars to
jaxprs and prints them as C++ (one statement per equation), so the model is never written
twice by hand and a change of the equations lands here.  Right-hand-side equations are
sorted by what they depend on: parameters only (once per member), also the year's forcing
(once per year: the drivers), the state (every evaluation; :func:`rhs_source` reports the
counts).

The C++ driver runs RK4 over blocks of ``GROUPS`` SIMD registers of members (64 float32 /
32 float64) with the batch innermost (``#pragma omp simd``; the register-wide groups
interleaved, so four independent dependency chains are in flight), one pass per evaluation
with the block's state in L1, the four stage updates fused into the evaluations (the
derivative never leaves registers; stage inputs only for components the right-hand side
reads).  exp and log are inlined polynomials (``_VMATH``: a libmvec call spills every
register).  The rest of the batch runs in blocks of one register (B = 1 computes 16 lanes),
blocks spread over OpenMP threads.  At each year's end it computes the annual outputs and
writes them straight into the result arrays of ``FIELDS`` (member, year[, column]), so no
state grid is written and XLA does no pass over the outputs; it reports which members
stayed finite (NaN outputs for the others) and skips the members past ``nvalid`` (bucket
padding).  It is built once per (model, dtype, machine) with the system
C++ compiler (compiled with -ffast-math, linked without it), cached on disk, and called
through the XLA FFI; :func:`available` says whether that worked (no compiler: XLA path).

Where the time goes (AMD EPYC Zen 4, 2 cores, 2026-11): the evaluation is bound by vector
arithmetic (AVX-512 runs at half width on Zen 4), ~300 vector operations per evaluation and
register group in float32, of which exp/log/sqrt/division are about half.

Forward only (no gradients); ``tests/test_ensemble.py`` checks member by member that its
outputs equal ``simulate(method="rk4")``'s.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ._model import Layout, drivers, initial_terms, rate_terms
from ._solve import FIELDS, OBSERVED, observe_year

__all__ = ["available", "rk4_observed", "rhs_source", "initial_source", "observation_source",
           "vector_math", "BLOCK", "GROUPS"]

# Interleaved lane groups (SIMD registers) per block: an evaluation is a long serial chain
# (log, exp, ..., log, exp); four independent chains keep the vector units busy.  Measured
# on the 2-core Zen 4 machine (inline exp/log, fused stages): 4 groups +14% (float64) and
# +20% (float32) over 2, 3 groups in between.
GROUPS = 4
# Members per block (GROUPS registers): state, stages, parameters and forcing stay in L1.
BLOCK = {np.dtype(np.float32): 16 * GROUPS, np.dtype(np.float64): 8 * GROUPS}
# Annual forcing values the kernel reads per year: rainfall, intensity, psi_plant, psi_eng.
N_FORCING = 4

_UNARY = {
    "exp": "vexp({0})", "log": "vlog({0})", "neg": "(-{0})", "sqrt": "std::sqrt({0})",
    "rsqrt": "(T(1) / std::sqrt({0}))", "abs": "std::abs({0})", "log1p": "std::log1p({0})",
    "expm1": "std::expm1({0})", "tanh": "std::tanh({0})", "sin": "std::sin({0})",
    "cos": "std::cos({0})", "exp2": "std::exp2({0})", "square": "({0} * {0})",
    "logistic": "(T(1) / (T(1) + std::exp(-{0})))", "not": "(!{0})",
    "sign": "(({0} > T(0)) - ({0} < T(0)))", "stop_gradient": "{0}", "copy": "{0}",
    "copy_p": "{0}", "reduce_precision": "{0}", "floor": "std::floor({0})",
    "ceil": "std::ceil({0})",
}
_BINARY = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
    "max": "({0} > {1} ? {0} : {1})", "min": "({0} < {1} ? {0} : {1})",
    "pow": "std::pow({0}, {1})", "atan2": "std::atan2({0}, {1})",
    "lt": "({0} < {1})", "le": "({0} <= {1})", "gt": "({0} > {1})", "ge": "({0} >= {1})",
    "eq": "({0} == {1})", "ne": "({0} != {1})", "and": "({0} && {1})", "or": "({0} || {1})",
}
# Shape-only primitives on scalars: the value passes through.
_IDENTITY = ("broadcast_in_dim", "reshape", "squeeze", "expand_dims", "convert_element_type")


def _ctype(dtype) -> str:
    """The C++ type of a scalar of ``dtype`` in the generated code."""
    dt = np.dtype(dtype)
    return "bool" if dt == np.bool_ else ("long" if np.issubdtype(dt, np.integer) else "T")


class _Emitter:
    """Prints a scalar jaxpr as C++, one statement per equation, sorted by what it depends on.

    Every value gets a *level*: 0 = parameters only (computed once per block), 1 = also the
    year's drivers (once per year), 2 = the state (every evaluation); literals are -1 and
    inline.  A value used at a higher level than its own is stored in ``H0``/``H1`` by the
    lower loop and loaded by the higher one: parameter-only and driver-only terms are hoisted
    out of the time steps, generically.  A division by a lower-level value becomes a product
    with its reciprocal, hoisted the same way.
    """

    def __init__(self):
        self.lines = {0: [], 1: [], 2: []}
        self.stores = {0: {}, 1: {}}  # name -> slot
        self.n = 0
        # values known to be NaN, +inf or >= the smallest normal number: max(x, c) with such
        # a literal c (the model's guard before a log); their log needs no subnormal, zero
        # or negative cases
        self.normal = set()
        # values known to be >= 0 or NaN (a square, a square root, an exp): a literal >= the
        # smallest normal number plus one of them is normal (the model's 1 + raw^8)
        self.nonneg = set()
        # name -> (base atom, p): the value is base ** p, built by square roots and
        # reciprocals (the model's eighth root sqrt(sqrt(1 / sqrt(x))))
        self.power = {}

    def ref(self, atom, level):
        lvl, name, direct = atom
        if direct or lvl == level or lvl < 0:
            return name
        slots = self.stores[lvl]
        if name not in slots:
            slots[name] = len(slots)
        return f"H{lvl}[{slots[name]} * W + i]"

    @staticmethod
    def literal(v):
        val = np.asarray(v.val)
        if val.dtype == np.bool_:
            return (-1, "true" if bool(val) else "false", True)
        if np.issubdtype(val.dtype, np.integer):
            return (-1, str(int(val)), True)
        return (-1, f"T({float(val)!r})", True)

    def jaxpr(self, jaxpr, consts, args):
        env = {}
        for v, c in zip(jaxpr.constvars, consts):
            c = np.asarray(c)
            if c.shape != ():
                raise ValueError("rate_terms must be elementwise (a non-scalar constant)")
            env[v] = (-1, f"T({float(c)!r})", True)
        for v, a in zip(jaxpr.invars, args):
            env[v] = a
        for eqn in jaxpr.eqns:
            ins = [self.literal(v) if hasattr(v, "val") else env[v] for v in eqn.invars]
            outs = self.eqn(eqn, ins)
            for v, o in zip(eqn.outvars, outs):
                env[v] = o
        return [self.literal(v) if hasattr(v, "val") else env[v] for v in jaxpr.outvars]

    def let(self, template, ins, aval, ctype=None):
        level = max([a[0] for a in ins] + [-1])
        expr = template.format(*[self.ref(a, max(level, 0)) for a in ins])
        if level < 0:
            return (-1, f"({expr})", True)
        self.n += 1
        name = f"t{self.n}"
        self.lines[level].append(f"const {ctype or _ctype(aval.dtype)} {name} = {expr};")
        return (level, name, False)

    def scan(self, eqn, ins):
        # Hoisting by level would move loop-body terms out of the loop.
        raise ValueError("the kernel generator emits loops only in the initial state")

    def eqn(self, eqn, ins):
        name = eqn.primitive.name
        aval = eqn.outvars[0].aval
        if any(getattr(v.aval, "shape", ()) != () for v in eqn.outvars):
            raise ValueError(f"rate_terms must be elementwise; {name} gave a non-scalar")
        if name in ("pjit", "jit", "closed_call", "core_call", "remat", "checkpoint",
                    "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"):
            sub = (eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
                   or eqn.params.get("fun_jaxpr"))
            return self.jaxpr(getattr(sub, "jaxpr", sub), getattr(sub, "consts", ()), ins)
        if name == "div" and 0 <= ins[1][0] < max(ins[0][0], 0):
            inv = self.let("(T(1) / {0})", [ins[1]], aval)
            return [self.let("({0} * {1})", [ins[0], inv], aval)]
        if name == "log" and ins[0][1] in self.normal:
            return [self.let("vlog<true>({0})", ins, aval)]
        power = self.root(name, ins)
        if power is not None and power[1] == -0.125 and power[0][1] in self.normal:
            out = [self.let("vinv8rt({0})", [power[0]], aval)]
        else:
            out = self.eqn_plain(eqn, ins)
        if power is not None:
            self.power[out[0][1]] = power
        if name in ("max", "add") and self.normal_result(name, ins, aval):
            self.normal.add(out[0][1])
            self.nonneg.add(out[0][1])
        elif power is not None or self.nonneg_result(eqn, ins):
            self.nonneg.add(out[0][1])  # a tracked power is a root or its reciprocal
        return out

    def nonneg_result(self, eqn, ins) -> bool:
        """Whether the equation's value is known to be >= 0 (or NaN)."""
        name = eqn.primitive.name
        if name in ("exp", "sqrt"):
            return True
        if name == "integer_pow":
            return eqn.params["y"] % 2 == 0
        if name in ("mul", "add"):
            return (name == "mul" and ins[0] == ins[1]) or all(
                a[1] in self.nonneg for a in ins)
        return False

    def normal_result(self, name, ins, aval) -> bool:
        """``max(x, c)``, or ``c + y`` with ``y`` known >= 0, for a literal ``c`` at least the
        smallest normal number: NaN, +inf or normal."""
        if not np.issubdtype(aval.dtype, np.floating):
            return False
        tiny = np.finfo(aval.dtype).tiny
        literal = any(m and float(m.group(1)) >= tiny
                      for m in (re.fullmatch(r"T\((.*)\)", a[1]) for a in ins if a[0] < 0))
        return literal and (name == "max" or all(a[0] < 0 or a[1] in self.nonneg
                                                 for a in ins))

    def root(self, name, ins):
        """``(base, p)`` when this equation makes ``base ** p`` by a square root, a reciprocal
        square root or a reciprocal of a tracked power (else None)."""
        if ins[0][0] < 0 and name != "div":
            return None
        if name in ("sqrt", "rsqrt"):
            base, p = self.power.get(ins[0][1], (ins[0], 1.0))
            return base, (p if name == "sqrt" else -p) / 2
        if name == "div" and ins[0] == (-1, "T(1.0)", True) and ins[1][1] in self.power:
            base, p = self.power[ins[1][1]]
            return base, -p
        return None

    def eqn_plain(self, eqn, ins):
        name = eqn.primitive.name
        aval = eqn.outvars[0].aval
        if name in _UNARY:
            return [self.let(_UNARY[name], ins, aval)]
        if name in _BINARY:
            return [self.let(_BINARY[name], ins, aval)]
        if name == "convert_element_type":
            ctype = _ctype(eqn.params["new_dtype"])
            return [self.let(f"static_cast<{ctype}>({{0}})", ins, aval, ctype)]
        if name in _IDENTITY:
            return [ins[0]]
        if name == "add_any":
            return [self.let("({0} + {1})", ins, aval)]
        if name == "scan":
            return self.scan(eqn, ins)
        if name == "integer_pow":
            k = int(eqn.params["y"])
            if k == 0:
                return [(-1, "T(1)", True)]
            body = " * ".join(["{0}"] * abs(k))
            return [self.let(f"({body})" if k > 0 else f"(T(1) / ({body}))", ins, aval)]
        if name == "clamp":  # lax.clamp(min, x, max)
            return [self.let("({1} < {0} ? {0} : ({1} > {2} ? {2} : {1}))", ins, aval)]
        if name == "select_n":  # select_n(pred, *cases): cases[pred]
            if len(ins) != 3:
                raise ValueError("select_n with more than two cases is not supported")
            return [self.let("({0} ? {2} : {1})", ins, aval)]
        raise ValueError(f"the kernel generator does not know the primitive {name!r}; "
                         "extend regv1_jax._kernel or use simulate_ensemble(kernel=False)")


def _scalar_rhs(p_treedef, n_params, layout):
    def f(*flat):
        p = jax.tree_util.tree_unflatten(p_treedef, flat[:n_params])
        d = drivers(p, *flat[n_params:n_params + N_FORCING])
        y = tuple(flat[n_params + N_FORCING:])
        return rate_terms(y, p, d, layout, jnp)

    return f


class _SegmentEmitter(_Emitter):
    """Prints a scalar jaxpr with ``fori_loop``s (``scan`` without per-iteration inputs or
    outputs) as vectorisable C++: straight-line *segments*, each one SIMD loop over the
    lanes, and each ``scan`` a counted loop around a SIMD loop over the lanes (GCC does not
    vectorise a lane loop that contains the counted loop).  A value used in a later segment
    than its own, and every loop carry, lives in ``SG[slot * W + i]``."""

    def __init__(self):
        super().__init__()
        self.segments = [("simd", [], {})]  # (kind, lines, stores: slot -> name)
        self.defseg = {}
        self.slots = {}

    def slot(self, name):
        if name not in self.slots:
            self.slots[name] = len(self.slots)
        return self.slots[name]

    def ref(self, atom, level=2):
        _, name, direct = atom
        if direct or self.defseg.get(name) == len(self.segments) - 1:
            return name
        k = self.slot(name)
        self.segments[self.defseg[name]][2][k] = name
        return f"SG[{k} * W + i]"

    def let(self, template, ins, aval, ctype=None):
        if all(a[0] < 0 for a in ins):
            return super().let(template, ins, aval, ctype)
        expr = template.format(*[self.ref(a) for a in ins])
        self.n += 1
        name = f"t{self.n}"
        self.segments[-1][1].append(f"const {ctype or _ctype(aval.dtype)} {name} = {expr};")
        self.defseg[name] = len(self.segments) - 1
        return (2, name, False)

    def scan(self, eqn, ins):
        prm = eqn.params
        nc, nk, body = prm["num_consts"], prm["num_carry"], prm["jaxpr"]
        if len(ins) != nc + nk or len(eqn.outvars) != nk:
            raise ValueError("scan with per-iteration inputs or outputs is not supported")
        slots = []
        for a in ins[nc:]:
            self.n += 1
            k = self.slot(f"carry{self.n}")
            self.segments[-1][1].append(f"SG[{k} * W + i] = {self.ref(a)};")
            slots.append(k)
        self.segments.append((("loop", int(prm["length"])), [], {}))
        seg = len(self.segments) - 1
        carries = []
        for k, v in zip(slots, body.jaxpr.invars[nc:]):
            self.n += 1
            carries.append((2, f"c{self.n}", False))
            self.segments[-1][1].append(f"const {_ctype(v.aval.dtype)} c{self.n} = "
                                        f"SG[{k} * W + i];")
            self.defseg[f"c{self.n}"] = seg
        outs = self.jaxpr(body.jaxpr, body.consts, list(ins[:nc]) + carries)
        news = [self.ref(o) for o in outs]
        self.segments[-1][1].extend(f"SG[{k} * W + i] = {x};" for k, x in zip(slots, news))
        self.segments.append(("simd", [], {}))
        return [(2, f"SG[{k} * W + i]", True) for k in slots]

    def render(self, tail):
        """C++ of every segment, ``tail`` (statements) at the end of the last."""
        self.segments[-1][1].extend(tail)
        out = [f"alignas(64) T SG[{max(len(self.slots), 1)} * W];"]
        for kind, lines, stores in self.segments:
            body = lines + [f"SG[{k} * W + i] = {n};" for k, n in stores.items()]
            if not body:
                continue
            loop = ["#pragma omp simd", "for (int i = 0; i < W; ++i) {",
                    *["  " + x for x in body], "}"]
            if kind != "simd":
                loop = [f"for (long it = 0; it < {kind[1]}; ++it) {{",
                        *["  " + x for x in loop], "}"]
            out.extend(loop)
        return "\n  ".join(out)


def rhs_source(p_def, layout: Layout, dtype) -> dict:
    """C++ of one right-hand-side evaluation, from ``drivers`` and ``rate_terms``, by level.

    The loops over lane ``i`` read ``P[j * W + i]`` (parameter leaf ``j``), ``DR[j * W + i]``
    (the year's forcing ``j``: rainfall, intensity, psi_plant, psi_eng), ``X[c * W + i]``
    (state component ``c`` of the stage input) and end with the fused RK4 stage update
    (:func:`_stage_update`); ``pre0`` fills ``H0`` (parameter-only terms), ``pre1`` fills
    ``H1`` (terms of the parameters and the year's forcing, the drivers included).
    """
    n_p, D = p_def.num_leaves, layout.size
    s = jax.ShapeDtypeStruct((), dtype)
    closed = jax.make_jaxpr(_scalar_rhs(p_def, n_p, layout))(*[s] * (n_p + N_FORCING + D))
    em = _Emitter()
    args = ([(0, f"P[{j} * W + i]", True) for j in range(n_p)]
            + [(1, f"DR[{j} * W + i]", True) for j in range(N_FORCING)]
            + [(2, f"X[{c} * W + i]", True) for c in range(D)])
    outs = em.jaxpr(closed.jaxpr, closed.consts, args)
    if len(outs) != D:
        raise ValueError(f"rate_terms returned {len(outs)} components, the layout has {D}")
    # Components the right-hand side never reads (running integrals) need no stage input.
    used = {id(v) for e in closed.jaxpr.eqns for v in e.invars} | {
        id(v) for v in closed.jaxpr.outvars}
    read = [id(v) in used for v in closed.jaxpr.invars[n_p + N_FORCING:]]
    rhs = em.lines[2] + [_stage_update(c, em.ref(o, 2), read[c]) for c, o in enumerate(outs)]
    pre1 = em.lines[1] + [f"H1[{k} * W + i] = {n};" for n, k in em.stores[1].items()]
    pre0 = em.lines[0] + [f"H0[{k} * W + i] = {n};" for n, k in em.stores[0].items()]
    sep = "\n      "
    return dict(RHS=sep.join(rhs), RHSG=sep.join(_interleave(rhs, GROUPS)),
                PRE1=sep.join(pre1), PRE0=sep.join(pre0), NP=n_p, ND=N_FORCING,
                N0=max(len(em.stores[0]), 1),
                N1=max(len(em.stores[1]), 1),
                equations=dict(per_member=len(em.lines[0]), per_year=len(em.lines[1]),
                               per_evaluation=len(em.lines[2]),
                               hoisted_loads=len(em.stores[0]) + len(em.stores[1])))


def initial_source(p_def, layout: Layout, dtype) -> dict:
    """C++ of the initial state, from ``drivers`` and ``initial_terms``: reads ``P`` and the
    first year's forcing ``DR``, writes ``Y[c * W + i]`` (the bisection of the initial soil
    moisture becomes a counted loop)."""
    n_p = p_def.num_leaves

    def f(*flat):
        p = jax.tree_util.tree_unflatten(p_def, flat[:n_p])
        return initial_terms(p, drivers(p, *flat[n_p:]), layout, jnp)

    s = jax.ShapeDtypeStruct((), dtype)
    closed = jax.make_jaxpr(f)(*[s] * (n_p + N_FORCING))
    em = _SegmentEmitter()
    args = ([(2, f"P[{j} * W + i]", True) for j in range(n_p)]
            + [(2, f"DR[{j} * W + i]", True) for j in range(N_FORCING)])
    outs = em.jaxpr(closed.jaxpr, closed.consts, args)
    if len(outs) != layout.size:
        raise ValueError(f"initial_terms returned {len(outs)} components, the layout has "
                         f"{layout.size}")
    return dict(INIT=em.render([f"Y[{c} * W + i] = {em.ref(o)};" for c, o in enumerate(outs)]))


def observation_source(p_def, layout: Layout, dtype) -> dict:
    """C++ of the observation step of a year, from ``observe_year``: reads ``P`` and the
    states at the start (``S0``), middle (``S1``) and end (``Y``) of the year, writes the
    outputs ``OB[k * W + i]`` in ``OBSERVED`` order."""
    n_p, D = p_def.num_leaves, layout.size

    def f(*flat):
        p = jax.tree_util.tree_unflatten(p_def, flat[:n_p])
        s0, s1, y = (tuple(flat[n_p + k * D:n_p + (k + 1) * D]) for k in range(3))
        return observe_year(s0, s1, y, p, layout)

    s = jax.ShapeDtypeStruct((), dtype)
    closed = jax.make_jaxpr(f)(*[s] * (n_p + 3 * D))
    em = _Emitter()  # every input at the evaluation level: nothing hoisted (once a year)
    args = ([(2, f"P[{j} * W + i]", True) for j in range(n_p)]
            + [(2, f"{a}[{c} * W + i]", True) for a in ("S0", "S1", "Y") for c in range(D)])
    outs = em.jaxpr(closed.jaxpr, closed.consts, args)
    lines = em.lines[2] + [f"OB[{k} * W + i] = {em.ref(o, 2)};" for k, o in enumerate(outs)]
    return dict(OBS="\n      ".join(lines), NO=len(outs))


def _stage_update(c: int, expr: str, read: bool = True) -> str:
    """RK4 stage ``S`` (a template constant of the lane loop) for component ``c``, fused into
    the evaluation: the derivative ``k`` never leaves registers.  Stage 1 starts the weighted
    sum ``A = k1``, stages 2-3 add ``2 k``, stages 1-3 write the next stage's input
    ``Z = Y + a k`` (only where the right-hand side reads component ``c``: ``read``); stage 4
    updates the state, ``Y += h/6 ((k1 + 2 k2 + 2 k3) + k4)``."""
    at = f"{c} * W + i]"

    def z(a):
        return f"Z[{at} = Y[{at} + {a} * k{c}; " if read else ""

    return (f"const T k{c} = {expr}; "
            f"if constexpr (S == 1) {{ A[{at} = k{c}; {z('half_h')}}} "
            f"else if constexpr (S == 2) {{ A[{at} = A[{at} + two * k{c}; {z('half_h')}}} "
            f"else if constexpr (S == 3) {{ A[{at} = A[{at} + two * k{c}; {z('full_h')}}} "
            f"else {{ Y[{at} = Y[{at} + sixth_h * (A[{at} + k{c}); }}")


def _interleave(lines, k):
    """The statements of a lane loop for ``k`` interleaved lane groups: lane ``i`` of group
    ``g`` is lane ``i + g W / k`` of the block.  Each statement is repeated per group (names
    ``tN`` -> ``tN_g``), so the core has ``k`` independent dependency chains in flight (an
    evaluation is a long serial chain: log, exp, ..., log, exp)."""
    out = []
    for line in lines:
        for g in range(k):
            out.append(re.sub(r"\b([tk]\d+)\b", rf"\1_{g}", line).replace(
                " * W + i]", f" * W + i + {g} * (W / {k})]"))
    return out


_DRIVER = r"""
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <type_traits>
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;

typedef @CTYPE@ T;
typedef @UTYPE@ U;  // T's bits
constexpr int WB = @W@;   // members per block
constexpr int WS = @WS@;  // members per block of the tail (one SIMD register)
constexpr int GROUPS = @GROUPS@;  // interleaved lane groups of a full block (WB = GROUPS WS)
constexpr int D = @D@;
constexpr int NP = @NP@;
constexpr int ND = @ND@;
constexpr int N0 = @N0@;
constexpr int N1 = @N1@;
constexpr int NO = @NO@;  // annual outputs (OBSERVED)
constexpr int NR = @NR@;  // result arrays (FIELDS): output k goes to column COL[k] of FIELD[k]
constexpr int FIELD[NO] = {@FIELD@};
constexpr int COL[NO] = {@COL@};
constexpr int WIDTH[NR] = {@WIDTH@};
constexpr int64_t MIN_BLOCKS = 8;

@VMATH@
// Parameter-only terms (once per block of members).
template <int W>
static inline void pre0(const T* __restrict P, T* __restrict H0) {
  #pragma omp simd
  for (int i = 0; i < W; ++i) {
      @PRE0@
  }
}

// Terms of the parameters and the year's drivers (once per year).
template <int W>
static inline void pre1(const T* __restrict P, const T* __restrict H0, const T* __restrict DR,
                        T* __restrict H1) {
  #pragma omp simd
  for (int i = 0; i < W; ++i) {
      @PRE1@
  }
}

// One right-hand-side evaluation of the block: one pass, state in L1.  A block of two
// registers (WB) runs them interleaved, two dependency chains in flight: +10% measured.
template <int W, int S>
static inline void rhs(const T* __restrict P, const T* __restrict H0, const T* __restrict DR,
                       const T* __restrict H1, const T* __restrict X, T* __restrict Y,
                       T* __restrict Z, T* __restrict A, const T half_h, const T full_h,
                       const T sixth_h) {
  const T two = T(2);
  if constexpr (W == GROUPS * WS) {
    #pragma omp simd
    for (int i = 0; i < W / GROUPS; ++i) {
      @RHSG@
    }
  } else {
    #pragma omp simd
    for (int i = 0; i < W; ++i) {
      @RHS@
    }
  }
}

// Lanes [0, n) of a W-wide block from row ``src``; lanes n..W-1 repeat lane 0 (a partial
// block computes copies of its first member and writes none of them).
template <int W>
static inline void load(T* __restrict dst, const T* __restrict src, int64_t n) {
  std::memcpy(dst, src, n * sizeof(T));
  for (int64_t i = n; i < W; ++i) dst[i] = src[0];
}

// The observation step of a year (generated from observe_year): the outputs from the
// states at the start (S0), middle (S1) and end (Y) of the year.
template <int W>
static inline void observe(const T* __restrict P, const T* __restrict S0,
                           const T* __restrict S1, const T* __restrict Y, T* __restrict OB) {
  #pragma omp simd
  for (int i = 0; i < W; ++i) {
      @OBS@
  }
}

// The initial state (generated from initial_terms) from the parameters and the first
// year's forcing.
template <int W>
static inline void init(const T* __restrict P, const T* __restrict DR, T* __restrict Y) {
  @INIT@
}

// Sets ``bad`` on lanes whose state is not finite (tested on the bits: -ffast-math lets
// the compiler assume finite values).
template <int W>
static inline void check(const T* __restrict Y, U* __restrict bad) {
  constexpr U absm = ~U(0) >> 1;
  const U inf = U(absm ^ (absm >> (sizeof(T) == 4 ? 8 : 11)));  // exponent bits all set
  for (int c = 0; c < D; ++c) {
    #pragma omp simd
    for (int i = 0; i < W; ++i) {
      U u;
      std::memcpy(&u, Y + c * W + i, sizeof(T));
      bad[i] |= U((u & absm) >= inf);
    }
  }
}

// RK4 over every year for members [o, o + n) (n <= W) of the problem.
template <int W>
static void block(const T* __restrict PR, const T* __restrict FV, T* const* R,
                  int32_t* __restrict OK, int64_t B, int64_t NY, int64_t steps, int64_t o,
                  int64_t n) {
  const double h = 1.0 / double(steps);
  const T half_h = T(0.5 * h), full_h = T(h), sixth_h = T(h / 6.0);
  const int64_t half = steps / 2;
  alignas(64) T P[NP * W], DR[ND * W], H0[N0 * W], H1[N1 * W], Y[D * W], A[D * W];
  alignas(64) T Z2[D * W], Z3[D * W], S0[D * W], S1[D * W], OB[NO * W];
  alignas(64) U bad[W] = {};
  for (int j = 0; j < NP; ++j) load<W>(P + j * W, PR + j * B + o, n);
  pre0<W>(P, H0);
  for (int j = 0; j < ND; ++j)
    for (int i = 0; i < W; ++i) DR[j * W + i] = FV[j];
  init<W>(P, DR, Y);
  check<W>(Y, bad);
  for (int64_t yr = 0; yr < NY; ++yr) {
    std::memcpy(S0, Y, sizeof(S0));
    for (int j = 0; j < ND; ++j)
      for (int i = 0; i < W; ++i) DR[j * W + i] = FV[yr * ND + j];
    pre1<W>(P, H0, DR, H1);
    for (int hf = 0; hf < 2; ++hf) {
      for (int64_t s = 0; s < half; ++s) {
        // Each evaluation reads its stage input X and writes the next one (Z2, Z3, Z4
        // alternate so that no stage reads what it writes), the weighted sum A, and at the
        // last stage the state Y.
        rhs<W, 1>(P, H0, DR, H1, Y, Y, Z2, A, half_h, full_h, sixth_h);
        rhs<W, 2>(P, H0, DR, H1, Z2, Y, Z3, A, half_h, full_h, sixth_h);
        rhs<W, 3>(P, H0, DR, H1, Z3, Y, Z2, A, half_h, full_h, sixth_h);
        rhs<W, 4>(P, H0, DR, H1, Z2, Y, Z3, A, half_h, full_h, sixth_h);
      }
      check<W>(Y, bad);
      if (hf == 0) std::memcpy(S1, Y, sizeof(S1));
    }
    observe<W>(P, S0, S1, Y, OB);
    // Straight into the result arrays' layout (member, year[, column]): no XLA pass over
    // the outputs follows.
    for (int k = 0; k < NO; ++k) {
      const int64_t stride = NY * WIDTH[FIELD[k]];
      T* __restrict dst = R[FIELD[k]] + (o * NY + yr) * WIDTH[FIELD[k]] + COL[k];
      for (int64_t i = 0; i < n; ++i) dst[i * stride] = OB[k * W + i];
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    OK[o + i] = bad[i] == 0;
    if (bad[i])  // a member whose state became NaN/inf: every output NaN
      for (int r = 0; r < NR; ++r)
        std::fill_n(R[r] + (o + i) * NY * WIDTH[r], NY * WIDTH[r], T(__builtin_nan("")));
  }
}

// The RK4 solves: PR (NP, B) (the parameter leaves), FV (NY, ND) (the forcing every
// member shares) -> the result arrays R[NR] (each (B, NY, WIDTH[r]): the FIELDS, NaN for
// a member whose state did not stay finite) and OK (B,) (1 where the member's state stayed
// finite at every half year).  Members [nvalid, B) (the padding of a bucket) are not
// solved: their outputs are zero and OK is 1.  Full blocks of WB members
// spread over the threads, then the rest in blocks of WS (one register: B = 1 costs one
// lane group, not WB).  A plain C entry point; the FFI handler below wraps it.
extern "C" void regv1_rk4_run(const T* __restrict PR, const T* __restrict FV, T* const* R,
                              int32_t* __restrict OK, int64_t B, int64_t nvalid, int64_t NY,
                              int64_t steps, int64_t threads) {
  const int64_t nv = std::max<int64_t>(0, std::min(nvalid, B));
  const int64_t nfull = nv / WB, tail0 = nfull * WB;
  const int64_t ntasks = nfull + (nv - tail0 + WS - 1) / WS;
  // A thread gets at least MIN_BLOCKS blocks: on a busy machine waking a second thread for
  // a few hundred microseconds of work costs more than it saves.
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(threads, ntasks / MIN_BLOCKS)));
  // Blocks handed out four at a time: when another process slows one core, the others take
  // over its share (float64, 32k members, 2 threads on a busy machine: median +5% over a
  // static split; equal on a quiet one).
  #pragma omp parallel for schedule(dynamic, 4) num_threads(nt) if(nt > 1)
  for (int64_t b = 0; b < ntasks; ++b) {
    if (b < nfull) {
      block<WB>(PR, FV, R, OK, B, NY, steps, b * WB, WB);
    } else {
      const int64_t o = tail0 + (b - nfull) * WS;
      block<WS>(PR, FV, R, OK, B, NY, steps, o, std::min<int64_t>(WS, nv - o));
    }
  }
  if (nv < B) {
    for (int r = 0; r < NR; ++r)
      std::memset(R[r] + nv * NY * WIDTH[r], 0, (B - nv) * NY * WIDTH[r] * sizeof(T));
    for (int64_t i = nv; i < B; ++i) OK[i] = 1;
  }
}

// exp (op 0), log (op 1), log of normal numbers (op 2) or x^(-1/8) of normal numbers (op 3)
// of x[0..n) into y: the kernel's own functions, for the tests.
extern "C" void regv1_vmath(int op, const T* __restrict x, T* __restrict y, int64_t n) {
  if (op == 0) {
    #pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = vexp(x[i]);
  } else if (op == 1) {
    #pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = vlog(x[i]);
  } else if (op == 2) {
    #pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = vlog<true>(x[i]);
  } else {
    #pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = vinv8rt(x[i]);
  }
}

static ffi::Error Rk4(ffi::Buffer<ffi::@FFI@> prm, ffi::Buffer<ffi::@FFI@> drv,
                      ffi::Buffer<ffi::S32> nvalid, ffi::RemainingRets res, int64_t steps,
                      int64_t threads) {
  const auto bad = ffi::Error::InvalidArgument("regv1 rk4 kernel: bad shapes or steps");
  if (prm.dimensions().size() != 2 || prm.dimensions()[0] != NP
      || drv.dimensions().size() != 2 || drv.dimensions()[1] != ND || drv.dimensions()[0] < 1
      || nvalid.element_count() != 1 || steps < 2 || steps % 2 || res.size() != NR + 1)
    return bad;
  const int64_t B = prm.dimensions()[1];
  const int64_t NY = drv.dimensions()[0];
  auto ok = res.get<ffi::Buffer<ffi::S32>>(NR);
  if (ok.has_error()) return ok.error();
  if ((*ok)->element_count() != B) return bad;
  T* R[NR];
  for (int r = 0; r < NR; ++r) {
    auto b = res.get<ffi::Buffer<ffi::@FFI@>>(r);
    if (b.has_error()) return b.error();
    if ((*b)->element_count() != B * NY * WIDTH[r]) return bad;
    R[r] = (*b)->typed_data();
  }
  regv1_rk4_run(prm.typed_data(), drv.typed_data(), R, (*ok)->typed_data(), B,
                nvalid.typed_data()[0], NY, steps, threads);
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    regv1_rk4, Rk4,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::@FFI@>>()
        .Arg<ffi::Buffer<ffi::@FFI@>>()
        .Arg<ffi::Buffer<ffi::S32>>()
        .RemainingRets()
        .Attr<int64_t>("steps")
        .Attr<int64_t>("threads"));
"""

_VMATH = r"""
// exp and log without calls (Cephes/fdlibm reductions and polynomials, within 2 ulp of
// numpy, checked in tests/test_kernel.py): inlined into the lane loops, so every lane stays
// in registers (a libmvec call spills them all: with calls, exp and log were half of an
// evaluation and the lane groups could not overlap).  Special values are tested on the bits
// (-ffast-math lets the compiler assume finite values in comparisons): NaN propagates (the
// status relies on it); exp gives 0 below the smallest normal result and inf above the
// largest; log gives -inf at +-0, NaN below 0, inf at inf, and handles subnormal inputs.
static inline __attribute__((always_inline)) T vexp(T x) {
  typedef typename std::make_signed<U>::type I;
  constexpr bool f32 = sizeof(T) == 4;
  // Below lo the result rounds to 0; 2^n is applied in two halves so that results near
  // overflow and subnormal results are right.
  constexpr T lo = f32 ? T(-103.97208) : T(-745.1332191019412);
  constexpr I nmax = f32 ? 127 : 1023;
  constexpr I nlo = f32 ? -150 : -1075;
  T fn = std::rint(x * T(1.4426950408889634));
  fn = fn > T(nmax + 1) ? T(nmax + 1) : (fn < T(nlo) ? T(nlo) : fn);
  const I n = I(fn), n1 = n >> 1;
  T r, p;
  if constexpr (f32) {  // Cephes expf: |r| <= ln2/2, degree 7
    r = std::fma(fn, T(-0.693359375), x);
    r = std::fma(fn, T(2.12194440e-4), r);
    p = T(1.9875691500E-4);
    p = std::fma(p, r, T(1.3981999507E-3));
    p = std::fma(p, r, T(8.3334519073E-3));
    p = std::fma(p, r, T(4.1665795894E-2));
    p = std::fma(p, r, T(1.6666665459E-1));
    p = std::fma(p, r, T(5.0000001201E-1));
    p = std::fma(p * r, r, r) + T(1);
  } else {  // |r| <= ln2/2, Taylor to degree 13 (truncation < 5e-18)
    r = std::fma(fn, T(-6.93147180369123816490e-01), x);
    r = std::fma(fn, T(-1.90821492927058770002e-10), r);
    p = T(1.0 / 6227020800.0);
    p = std::fma(p, r, T(1.0 / 479001600.0));
    p = std::fma(p, r, T(1.0 / 39916800.0));
    p = std::fma(p, r, T(1.0 / 3628800.0));
    p = std::fma(p, r, T(1.0 / 362880.0));
    p = std::fma(p, r, T(1.0 / 40320.0));
    p = std::fma(p, r, T(1.0 / 5040.0));
    p = std::fma(p, r, T(1.0 / 720.0));
    p = std::fma(p, r, T(1.0 / 120.0));
    p = std::fma(p, r, T(1.0 / 24.0));
    p = std::fma(p, r, T(1.0 / 6.0));
    p = std::fma(p, r, T(0.5));
    p = std::fma(p * r, r, r) + T(1);
  }
  const T s1 = __builtin_bit_cast(T, U(n1 + nmax) << (f32 ? 23 : 52));
  const T s2 = __builtin_bit_cast(T, U(n - n1 + nmax) << (f32 ? 23 : 52));
  const T res = x < lo ? T(0) : (p * s1) * s2;
  constexpr U absm = ~U(0) >> 1, inf = f32 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  return (__builtin_bit_cast(U, x) & absm) > inf ? x : res;
}

// NORMAL: x is known to be NaN, +inf or at least the smallest normal number (the generator
// proves it where the argument is max(y, c) with such a literal c): no subnormal, zero or
// negative cases to handle.
template <bool NORMAL = false>
static inline __attribute__((always_inline)) T vlog(T x) {
  typedef typename std::make_signed<U>::type I;
  constexpr bool f32 = sizeof(T) == 4;
  constexpr int mb = f32 ? 23 : 52;
  constexpr U absm = ~U(0) >> 1, inf = f32 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  constexpr U tiny = U(1) << mb;  // the smallest normal
  constexpr U hsqrt2 = f32 ? U(0x3f3504f3u) : U(0x3fe6a09e667f3bcdull);  // sqrt(1/2)
  const U u0 = __builtin_bit_cast(U, x), a = u0 & absm;
  const bool sub = !NORMAL && a < tiny;  // subnormal (or zero): scale by 2^mb first
  const U u = __builtin_bit_cast(U, sub ? x * T(f32 ? 8388608.0 : 4503599627370496.0) : x);
  // x = 2^e m with m in [sqrt(1/2), sqrt(2)): offset the bits so the exponent rounds there.
  const U off = u - hsqrt2;
  const T e = T(I(off) >> mb) - (sub ? T(mb) : T(0));
  const T f = __builtin_bit_cast(T, (off & (tiny - 1)) + hsqrt2) - T(1);
  const T s = f / (T(2) + f);
  const T z = s * s;
  // fdlibm: log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f)
  const T w = z * z;
  T t1, t2;
  if constexpr (f32) {
    t1 = w * std::fma(w, T(2.4279078841e-01), T(4.0000972152e-01));
    t2 = z * std::fma(w, T(2.8498786688e-01), T(6.6666662693e-01));
  } else {
    t1 = w * std::fma(w, std::fma(w, T(1.531383769920937332e-01),
                                  T(2.222219843214978396e-01)),
                      T(3.999999999940941908e-01));
    t2 = z * std::fma(w, std::fma(w, std::fma(w, T(1.479819860511658591e-01),
                                              T(1.818357216161805012e-01)),
                                  T(2.857142874366239149e-01)),
                      T(6.666666666666735130e-01));
  }
  const T R = t1 + t2, hfsq = T(0.5) * f * f;
  constexpr T ln2_hi = f32 ? T(6.9313812256e-01) : T(6.93147180369123816490e-01);
  constexpr T ln2_lo = f32 ? T(9.0580006145e-06) : T(1.90821492927058770002e-10);
  T res = std::fma(e, ln2_hi, f - (hfsq - std::fma(s, hfsq + R, e * ln2_lo)));
  res = a >= inf ? x : res;  // inf -> inf, NaN -> NaN
  if constexpr (NORMAL) return res;
  res = (u0 != a) ? T(__builtin_nan("")) : res;  // negative -> NaN
  return a == 0 ? T(-__builtin_inf()) : res;
}

// x^(-1/8) for x NaN, +inf or at least the smallest normal number (the generator proves it,
// as for vlog<true>: the model's smooth runoff cap takes (1 + raw^8)^(-1/8)).  As written,
// sqrt(sqrt(1 / sqrt(x))) is three square roots and a division in one dependency chain, all
// on the divider (~10% of a float64 evaluation); here: a seed from the bits, bits(y) =
// K - bits(x) / 8 (within 3%), then third-order steps y += y e (1/8 + 9/128 e),
// e = 1 - x y^8 (two for float, three for double; within 1.5 ulp, checked in
// tests/test_kernel.py).  x y^8 is taken as (x y^4) y^4: no overflow for any normal x.
static inline __attribute__((always_inline)) T vinv8rt(T x) {
  constexpr bool f32 = sizeof(T) == 4;
  constexpr U inf = f32 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  const U b = __builtin_bit_cast(U, x);
  T y = __builtin_bit_cast(T, U((f32 ? U(0x47692000u) : U(0x47ED200000000000ull)) - (b >> 3)));
  // written out, not a loop: nothing in a lane loop's body that could keep it scalar
  const auto step = [x](T y) {
    const T y2 = y * y, y4 = y2 * y2;
    const T e = T(1) - (x * y4) * y4;
    return y + (y * e) * (T(0.125) + e * T(9.0 / 128));
  };
  y = step(step(y));
  if constexpr (!f32) y = step(y);
  // inf -> 0 by a bit mask (NaN stays NaN through e): a select on this integer compare is
  // not if-converted in every lane loop that inlines it, and GCC 12 then leaves the loop
  // scalar (the one-register tail blocks: B = 1 took 3x as long)
  return __builtin_bit_cast(T, __builtin_bit_cast(U, y) & (U(0) - U(b != inf)));
}
"""


CXXFLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c++17")
# Linked in a second step without -ffast-math: GCC (before 13) links crtfastmath.o into a
# -ffast-math shared library, and loading it would switch the whole process to
# flush-to-zero (numpy and XLA would then lose every subnormal number).
LDFLAGS = ("-shared", "-fopenmp")


def _source(p_def, layout, dtype):
    dtype = np.dtype(dtype)
    parts = rhs_source(p_def, layout, dtype)
    parts.pop("equations")
    parts.update(observation_source(p_def, layout, dtype))
    parts.update(initial_source(p_def, layout, dtype))
    ctype, utype, ffi_t = (("float", "uint32_t", "F32") if dtype == np.float32
                           else ("double", "uint64_t", "F64"))
    # where each OBSERVED output goes: result array (FIELDS) and column
    place = {key: (r, c) for r, (_, keys) in enumerate(FIELDS) for c, key in enumerate(keys)}
    field, col = zip(*(place[key] for key in OBSERVED))
    src = _DRIVER
    for k, v in dict(VMATH=_VMATH, CTYPE=ctype, UTYPE=utype, W=BLOCK[dtype],
                     WS=64 // dtype.itemsize, GROUPS=GROUPS, D=layout.size, FFI=ffi_t,
                     NR=len(FIELDS), FIELD=", ".join(map(str, field)),
                     COL=", ".join(map(str, col)),
                     WIDTH=", ".join(str(len(keys)) for _, keys in FIELDS), **parts).items():
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
def _build(src: str) -> str | None:
    """Compile ``src`` (cached on disk by content, compiler and CPU); the target name."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return None
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    key = hashlib.sha256("\0".join([src, version, " ".join(CXXFLAGS + LDFLAGS), _cpu_tag(),
                                    jax.ffi.include_dir()]).encode()).hexdigest()[:20]
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
    handle = ctypes.CDLL(str(lib))
    name = f"regv1_rk4_{key}"
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handle.regv1_rk4), platform="cpu")
    _LIBS[name] = handle
    return name


_LIBS: dict = {}


def target(params, layout: Layout, dtype) -> str | None:
    """The FFI target name of the kernel for this model and dtype (built on first use).

    ``params``: a ``Params`` (any leaf shapes) or its treedef.  ``None`` when the kernel
    cannot be built (no compiler, ``REGV1_NO_KERNEL`` set, an unknown primitive).
    """
    if os.environ.get("REGV1_NO_KERNEL"):
        return None
    if not isinstance(params, jax.tree_util.PyTreeDef):
        params = jax.tree_util.tree_structure(params)
    return _target(params, layout, np.dtype(dtype))


@functools.cache
def _target(p_def, layout, dtype):
    try:
        src = _source(p_def, layout, dtype)
    except ValueError as e:  # a primitive the generator does not know
        warnings.warn(f"regv1_jax: no RK4 kernel for this model ({e}); using the XLA path",
                      stacklevel=3)
        return None
    return _build(src)


def available(params, layout: Layout, dtype) -> bool:
    return target(params, layout, dtype) is not None


def rk4_observed(name: str, prm, forcing_values, steps_per_year: int, threads: int,
                 nvalid=None):
    """Call the kernel: ``prm (NP, B)`` (the parameter leaves, stacked), ``forcing_values
    (NY, 4)`` (rainfall, intensity, psi_plant, psi_eng of each year, shared by every member)
    -> ``(fields, finite)``: ``fields`` maps each of ``FIELDS``' names to its ``(B, NY)``
    (or ``(B, NY, k)``) array of annual outputs of ``observe_year``, NaN for a member whose
    state did not stay finite; ``finite (B,)`` (int32) is 1 where it did.  The kernel
    computes the initial state itself (``initial_terms``) and writes the outputs in their
    final layout: no state grid, no XLA pass over the outputs.

    ``nvalid`` (a traced integer, default ``B``): members from there on are padding and are
    not solved (zero outputs, ``finite`` 1).
    """
    B = prm.shape[1]
    NY = forcing_values.shape[0]
    nvalid = jnp.asarray(B if nvalid is None else nvalid, jnp.int32).reshape(1)
    out = tuple(jax.ShapeDtypeStruct((B, NY) + ((len(keys),) if len(keys) > 1 else ()),
                                     prm.dtype)
                for _, keys in FIELDS) + (jax.ShapeDtypeStruct((B,), jnp.int32),)
    *fields, finite = jax.ffi.ffi_call(name, out)(
        prm, forcing_values, nvalid, steps=np.int64(steps_per_year), threads=np.int64(threads))
    return dict(zip((f for f, _ in FIELDS), fields)), finite


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
