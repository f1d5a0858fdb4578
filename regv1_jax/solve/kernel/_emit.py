"""The jaxpr -> C++ emitter of the ensemble kernel: the model's own functions, printed.

XLA:CPU has no multi-output loop fusion: a right-hand side of ~15 components compiles to
~24 loop kernels (one full pass over the batch each), so the fused XLA ensemble runs at a
third of what the CPU does.  This module writes the model once more, but *mechanically*: it
traces ``drivers`` + ``rate_terms`` (the right-hand side), ``initial_terms`` (the initial
state, its bisection a counted loop) and ``observe_year`` (the annual outputs) on scalars to
jaxprs and prints them as C++ (one statement per equation), so the model is never written
twice by hand and a change of the equations lands here.  Right-hand-side equations are
sorted by what they depend on: parameters only (once per member), also the year's forcing
(once per year: the drivers), the state (every evaluation; :func:`rhs_source` reports the
counts).  ``_build`` fills the driver template (``driver.cc``, ``vmath.h``) with these
pieces, compiles it and registers it with the XLA FFI.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from ...model import Layout, drivers, initial_terms, rate_terms
from .._simulate import observe_year

__all__ = ["rhs_source", "initial_source", "observation_source", "BLOCK", "GROUPS", "Emitter",
           "SegmentEmitter", "N_FORCING"]

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


class Emitter:
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
        raise ValueError(f"the kernel generator does not know the primitive {name!r}; extend "
                         "regv1_jax.solve.kernel._emit or use simulate_ensemble(kernel=False)")


def _scalar_rhs(p_treedef, n_params, layout):
    def f(*flat):
        p = jax.tree_util.tree_unflatten(p_treedef, flat[:n_params])
        d = drivers(p, *flat[n_params:n_params + N_FORCING])
        y = tuple(flat[n_params + N_FORCING:])
        return rate_terms(y, p, d, layout, jnp)

    return f


def _scalar_rhs_jvp(p_treedef, n_params, layout):
    """The right-hand side of the forward sensitivity system: parameters ``(p, dp)``
    (``2 n_params``), the year's forcing, state ``(y, dy)`` (``2 D``) -> ``(f, df)`` with
    ``df`` the JVP of ``drivers`` + ``rate_terms`` along ``(dp, dy)``."""
    D = layout.size

    def f(*flat):
        p, dp = (jax.tree_util.tree_unflatten(p_treedef, flat[k * n_params:(k + 1) * n_params])
                 for k in range(2))
        fv = flat[2 * n_params:2 * n_params + N_FORCING]
        z = flat[2 * n_params + N_FORCING:]

        def g(p, y):
            return rate_terms(y, p, drivers(p, *fv), layout, jnp)

        out, tan = jax.jvp(g, (p, tuple(z[:D])), (dp, tuple(z[D:])))
        return tuple(out) + tuple(tan)

    return f


class SegmentEmitter(Emitter):
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


def rhs_source(p_def, layout: Layout, dtype, jvp: bool = False) -> dict:
    """C++ of one right-hand-side evaluation, from ``drivers`` and ``rate_terms``, by level
    (``jvp``: of the forward sensitivity system, parameters ``(p, dp)`` and state
    ``(y, dy)``, from ``jax.jvp`` of the same functions).

    The loops over lane ``i`` read ``P[j * W + i]`` (parameter leaf ``j``), ``DR[j * W + i]``
    (the year's forcing ``j``: rainfall, intensity, psi_plant, psi_eng), ``X[c * W + i]``
    (state component ``c`` of the stage input) and end with the fused RK4 stage update
    (:func:`_stage_update`); ``pre0`` fills ``H0`` (parameter-only terms), ``pre1`` fills
    ``H1`` (terms of the parameters and the year's forcing, the drivers included).
    """
    n_p, D = p_def.num_leaves, layout.size
    s = jax.ShapeDtypeStruct((), dtype)
    if jvp:
        fn = _scalar_rhs_jvp(p_def, n_p, layout)
        n_p, D = 2 * n_p, 2 * D
    else:
        fn = _scalar_rhs(p_def, n_p, layout)
    closed = jax.make_jaxpr(fn)(*[s] * (n_p + N_FORCING + D))
    em = Emitter()
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


def initial_source(p_def, layout: Layout, dtype, jvp: bool = False) -> dict:
    """C++ of the initial state, from ``drivers`` and ``initial_terms``: reads ``P`` and the
    first year's forcing ``DR``, writes ``Y[c * W + i]`` (the bisection of the initial soil
    moisture becomes a counted loop); ``jvp``: ``(y0, dy0)`` from ``(p, dp)``."""
    n_p = p_def.num_leaves

    def f(*flat):
        p = jax.tree_util.tree_unflatten(p_def, flat[:n_p])
        return initial_terms(p, drivers(p, *flat[n_p:]), layout, jnp)

    def f_jvp(*flat):
        p, dp = (jax.tree_util.tree_unflatten(p_def, flat[k * n_p:(k + 1) * n_p])
                 for k in range(2))
        fv = flat[2 * n_p:]
        out, tan = jax.jvp(lambda q: initial_terms(q, drivers(q, *fv), layout, jnp),
                           (p,), (dp,))
        return tuple(out) + tuple(tan)

    s = jax.ShapeDtypeStruct((), dtype)
    n_in = (2 if jvp else 1) * n_p
    closed = jax.make_jaxpr(f_jvp if jvp else f)(*[s] * (n_in + N_FORCING))
    n_p, size = n_in, (2 if jvp else 1) * layout.size
    em = SegmentEmitter()
    args = ([(2, f"P[{j} * W + i]", True) for j in range(n_p)]
            + [(2, f"DR[{j} * W + i]", True) for j in range(N_FORCING)])
    outs = em.jaxpr(closed.jaxpr, closed.consts, args)
    if len(outs) != size:
        raise ValueError(f"initial_terms returned {len(outs)} components, the layout has "
                         f"{size}")
    return dict(INIT=em.render([f"Y[{c} * W + i] = {em.ref(o)};" for c, o in enumerate(outs)]))


def observation_source(p_def, layout: Layout, dtype, jvp: bool = False) -> dict:
    """C++ of the observation step of a year, from ``observe_year``: reads ``P`` and the
    states at the start (``S0``), middle (``S1``) and end (``Y``) of the year, writes the
    outputs ``OB[k * W + i]`` in ``OBSERVED`` order (``jvp``: the outputs, then their
    tangents, from parameters ``(p, dp)`` and states ``(y, dy)``)."""
    n_p, D = p_def.num_leaves, layout.size

    def f(*flat):
        p = jax.tree_util.tree_unflatten(p_def, flat[:n_p])
        s0, s1, y = (tuple(flat[n_p + k * D:n_p + (k + 1) * D]) for k in range(3))
        return observe_year(s0, s1, y, p, layout)

    def f_jvp(*flat):
        p, dp = (jax.tree_util.tree_unflatten(p_def, flat[k * n_p:(k + 1) * n_p])
                 for k in range(2))
        z = [flat[2 * n_p + k * 2 * D:2 * n_p + (k + 1) * 2 * D] for k in range(3)]
        out, tan = jax.jvp(lambda q, a, b, c: observe_year(a, b, c, q, layout),
                           (p, *(tuple(zk[:D]) for zk in z)),
                           (dp, *(tuple(zk[D:]) for zk in z)))
        return tuple(out) + tuple(tan)

    s = jax.ShapeDtypeStruct((), dtype)
    n_in, D_in = (2 * n_p, 2 * D) if jvp else (n_p, D)
    closed = jax.make_jaxpr(f_jvp if jvp else f)(*[s] * (n_in + 3 * D_in))
    n_p, D = n_in, D_in
    em = Emitter()  # every input at the evaluation level: nothing hoisted (once a year)
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
