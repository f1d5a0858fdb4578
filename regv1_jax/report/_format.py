"""Formatting shared by every writer: JSON-safe numbers, table cells, markdown tables."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["json_safe", "fmt", "md_table", "flag_words"]


def json_safe(x):
    """``x`` with numpy scalars as Python numbers and non-finite floats as None (JSON)."""
    if x is None:
        return None
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def fmt(x, nd=3):
    """A table cell: ``nd`` significant digits, \u2013 for None or non-finite."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "pass" if x else "FAIL"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "–" if not math.isfinite(float(x)) else f"{float(x):.{nd}g}"
    return str(x)


def md_table(header, rows) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |"
            for r in rows]
    return "\n".join(out)


def flag_words(entry: dict) -> str:
    """The flags of a params.json entry, in words (empty when none)."""
    out = []
    if entry.get("at_bound"):
        out.append(f"at {entry['at_bound']} bound")
    if entry.get("not_identified"):
        out.append("not identified by the data")
    if entry.get("prior_dominated"):
        out.append("prior-dominated")
    if entry.get("outside_prior_CI_95"):
        out.append("outside prior CI_95")
    return ", ".join(out)
