"""Loop kernels in optimised HLO text: how many full passes over the batch one right-hand
side of the XLA ensemble path costs (``bench_solve.py``, ``tests/test_ensemble.py``)."""

from __future__ import annotations

import re

__all__ = ["loop_body_fusions"]


def _computations(hlo_text: str) -> dict[str, list[str]]:
    comps, name, body = {}, None, []
    for line in hlo_text.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if m and not line.startswith(" "):
            name, body = m.group(1), []
        elif line.startswith("}") and name is not None:
            comps[name] = body
            name = None
        elif name is not None:
            body.append(line)
    return comps


def loop_body_fusions(hlo_text: str) -> int:
    """Loop kernels (XLA fusions) in the largest ``while`` body of optimised HLO text.

    For the batch-last XLA path (inner steps unrolled) that body is one year: divide by the
    ``4 * steps_per_year`` right-hand-side evaluations of a year to get kernels (full passes
    over the batch) per evaluation.  0 when no time loop runs in XLA (the kernel path: one
    pass per evaluation inside the custom call).
    """
    comps = _computations(hlo_text)
    bodies = re.findall(r"\bwhile\(.*?body=%?([\w.\-]+)", hlo_text)
    counts = [sum(1 for ln in comps.get(b, []) if re.search(r"= \S+ fusion\(", ln))
              for b in bodies]
    return max(counts, default=0)
