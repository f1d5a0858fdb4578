"""Locate the data files bundled with ``regv1_jax``.

In a source checkout or an editable install the files live in ``<repo>/data``; in a wheel they
are force-included as ``regv1_jax/_bundled_data`` (see ``pyproject.toml``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["data_dir", "data_path"]


def data_dir() -> Path:
    """Return the folder that holds the bundled data files.

    Returns
    -------
    pathlib.Path
        ``<repo>/data`` when it exists next to the package (source checkout or editable
        install), otherwise ``regv1_jax/_bundled_data`` (wheel install). The returned folder is
        not guaranteed to exist; :func:`data_path` checks.
    """
    package = Path(__file__).resolve().parent
    source_tree = package.parent / "data"
    if source_tree.is_dir():
        return source_tree
    return package / "_bundled_data"


def data_path(name: str) -> Path:
    """Return the path of one bundled data file.

    Arguments
    ---------
    name : str
        File name relative to the data folder, e.g. ``"loess_plateau_1995_2010.csv"``.

    Returns
    -------
    pathlib.Path
        Absolute path of the file.

    Raises
    ------
    FileNotFoundError
        If the file is not in the data folder; the message names the folder searched.
    """
    folder = data_dir()
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"bundled data file {name!r} not found in {folder}")
    return path
