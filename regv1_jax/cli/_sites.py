"""``regv1 sites``: the bundled sites."""

from __future__ import annotations

from pathlib import Path

import click

from ._common import cli_errors


@click.command()
def sites():
    """List the bundled sites: region, data file, mean annual precipitation, planting start.

    Names work with --site of simulate and calibrate; the files are read from the
    installed package's data folder."""
    from .._paths import data_dir
    from ..io import site_registry

    with cli_errors():
        reg = site_registry()
        root = data_dir()
    rows = [("site", "region", "data file", "MAP_mm", "planting")]
    for name in sorted(reg):
        e = reg[name]
        f = e.get("data_file")
        path = (Path(e["_folder"]) / f) if f else None
        shown = str(path.relative_to(root)) if path is not None else "(none: pass --data)"
        rows.append((name, str(e.get("region", "")), shown,
                     "" if e.get("MAP_mm") is None else f"{e['MAP_mm']:g}",
                     str(e.get("planting_start") or "none")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    click.echo(f"data folder: {root}")
