"""Owned, atomic outputs of the ``regv1`` command (files only; no JAX here).

A command that writes a folder (``regv1 calibrate --out DIR``) proceeds in three steps:

1. :func:`check_out_dir` before any computing: ``DIR`` must not be a file, must be empty or
   hold a regv1 manifest (else ``force``), and its parent must accept a new folder (a
   temporary folder is created there and removed again).
2. :func:`atomic_out_dir` yields a temporary folder beside ``DIR`` into which every file is
   written; on success it writes ``manifest.json`` and swaps the folder into place (two
   renames on the same file system); on any error or interrupt the temporary folder is
   removed and ``DIR`` is left as it was.  An interrupted run therefore never leaves a
   folder that mixes old and new files.
3. ``manifest.json`` (:func:`manifest`) marks the folder as regv1's: command line, package
   version, the inputs' SHA-256, the time, the dtype and every file written with its SHA-256.

Single files (``regv1 simulate --out FILE.csv --plot FILE.png``) use :func:`check_out_file`
and :func:`atomic_files`: each file is written beside its target under a temporary name and
all are renamed into place only once every one is complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

__all__ = ["MANIFEST", "OutputError", "check_out_dir", "check_out_file", "atomic_out_dir",
           "atomic_files", "manifest", "read_manifest", "sha256", "os_error_message"]

MANIFEST = "manifest.json"
TOOL = "regv1_jax"
_TMP_PREFIX = ".regv1-tmp-"


class OutputError(ValueError):
    """An output path cannot be used; the message names it and says what to do."""


def os_error_message(err: OSError, what: str = "") -> str:
    """One line for an OS error: ``[what: ]PATH: reason``."""
    parts = [what] if what else []
    if err.filename is not None:
        parts.append(str(err.filename))
    parts.append(err.strerror or err.__class__.__name__)
    return ": ".join(parts)


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: str | Path) -> dict | None:
    """The folder's regv1 manifest, or None when it has none (or not one of regv1's)."""
    path = Path(folder) / MANIFEST
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("tool") == TOOL else None


def _probe_parent(parent: Path, option: str) -> None:
    """Create (and remove) a temporary folder in ``parent``: proves that a new folder can be
    written and renamed there."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=_TMP_PREFIX + "probe-", dir=parent)
        os.rmdir(probe)
    except OSError as err:
        raise OutputError(f"{option} {parent}: cannot write there "
                          f"({err.strerror or err})") from None


def check_out_dir(out: str | Path, force: bool = False, option: str = "--out") -> Path:
    """Check, before any computing, that ``out`` can become a regv1 output folder.

    Raises :class:`OutputError` when ``out`` is a file, when it is a non-empty folder
    without a regv1 ``manifest.json`` (unless ``force``), or when its parent folder cannot
    take a new folder (read-only, missing permissions, a pseudo file system).
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option} {out}: is a file, not a folder")
    if out.is_dir():
        try:
            entries = [p.name for p in out.iterdir()]
        except OSError as err:
            raise OutputError(f"{option} {out}: cannot read the folder "
                              f"({err.strerror or err})") from None
        if entries and read_manifest(out) is None and not force:
            shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
            raise OutputError(
                f"{option} {out}: the folder holds files that regv1 did not write ({shown}; "
                f"no {MANIFEST}); choose an empty or new folder, or pass --force to replace "
                "the folder and everything in it")
    _probe_parent(out.absolute().parent, option)
    return out


def check_out_file(path: str | Path, option: str, suffixes: Sequence[str] | None = None
                   ) -> Path:
    """Check, before any computing, that the file ``path`` can be written: not a folder, a
    known suffix (when ``suffixes`` is given), a writable parent folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; give a file name")
    if suffixes is not None and path.suffix.lower().lstrip(".") not in suffixes:
        raise OutputError(f"{option} {path}: unknown file type {path.suffix or '(none)'!r}; "
                          f"use one of {', '.join('.' + s for s in suffixes)}")
    _probe_parent(path.absolute().parent, option)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{option} {path}: the file exists and is read-only")
    return path


def manifest(command: Sequence[str], inputs: Mapping[str, str | Path | None],
             files: Sequence[Path] = (), **extra) -> dict:
    """The manifest document: tool, version, command, UTC time, inputs and files (SHA-256)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version(TOOL)
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        ver = None
    return {
        "tool": TOOL,
        "version": ver,
        "command": list(command),
        "python": sys.version.split()[0],
        "time_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "inputs": {k: ({"path": str(Path(v).resolve()), "sha256": sha256(v)}
                       if v is not None else None) for k, v in inputs.items()},
        **extra,
        "files": {p.name: sha256(p) for p in files},
    }


@contextlib.contextmanager
def atomic_out_dir(out: str | Path, manifest_doc: Mapping | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success, write ``manifest.json`` there
    (``manifest_doc`` plus the SHA-256 of every file) and move it into place as ``out``.

    An existing ``out`` is renamed aside first and removed only after the new folder is in
    place.  On any exception (KeyboardInterrupt included) the temporary folder is removed
    and ``out`` is untouched.
    """
    out = Path(out).expanduser().absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX + out.name + "-", dir=out.parent))
    try:
        yield tmp
        if manifest_doc is not None:
            doc = dict(manifest_doc)
            doc["files"] = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            (tmp / MANIFEST).write_text(json.dumps(doc, indent=2) + "\n")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX + out.name + "-old-",
                                        dir=out.parent))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_files(targets: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Yield one temporary path beside each target; once the block ends without error,
    rename every one into place (else remove them all and leave the targets untouched)."""
    paths = [Path(t).expanduser() for t in targets]
    tmps: list[Path] = []
    try:
        for t in paths:
            t.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=t.suffix, dir=t.parent)
            os.close(fd)
            tmps.append(Path(name))
        yield tmps
        for tmp, t in zip(tmps, paths):
            os.replace(tmp, t)
    except BaseException:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
