"""The batched evaluator: many parameter sets in, one quantity of interest each out.

Two layers:

* :func:`map_chunks` - the streaming driver, independent of what is computed: ``n`` items
  cut into chunks of ``chunk``; ``make_chunk(lo, hi)`` builds the inputs of one chunk,
  ``fn`` maps them to ``(values (c,), status (c,))``; each finished chunk goes to an
  optional on-disk :class:`ChunkStore` (one ``.npz`` per chunk + ``index.json``), so an
  interrupted run resumes where it stopped; a progress line with a time estimate.  Only
  the per-item values and status of the whole run are kept (8 + 4 bytes per item), never a
  chunk's trajectories: resident memory is one chunk's solve plus ``12 n`` bytes.
  Bootstrap and profile refits plug in here with ``fn`` = a vmapped fit.
* :func:`qoi_fn` / :func:`evaluate` - the forward solve (``simulate_ensemble``: buckets,
  sharding over ``jax.devices()``, the C++ kernel on CPU) and a :class:`QoI` per chunk.

Status per item (``RESULTS`` codes): successful, the solver's codes, and ``QOI_NONFINITE``
where the solve succeeded but the QoI is NaN/inf (e.g. ``V_crit`` of a set that is not
bistable).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..model import Forcing, Params
from ..solve import simulate_ensemble
from ..status import code
from ._qoi import QoI

__all__ = ["ChunkStore", "Evaluation", "map_chunks", "qoi_fn", "evaluate", "QOI_NONFINITE",
           "DEFAULT_CHUNK", "chunk_for_memory"]

# Status of an item whose solve succeeded but whose QoI is not finite.
QOI_NONFINITE = code("qoi_nonfinite")
# Default members per chunk: ~65k 21-year solves hold ~120 MB of annual outputs (float32)
# plus the kernel's own sub-chunks; large enough that the per-call overhead is < 1%.
DEFAULT_CHUNK = 65536


def chunk_for_memory(n_years: int, dtype, budget_bytes: float = 1e9) -> int:
    """Members per chunk whose annual outputs (about 20 numbers per year and scenario, x4
    for temporaries) fit ``budget_bytes``; a power of two between 1024 and 2^20."""
    per = 20 * n_years * np.dtype(dtype).itemsize * 4
    c = int(budget_bytes // per)
    return int(min(max(1 << max(c.bit_length() - 1, 0), 1024), 1 << 20))


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Values and per-item status of a batched evaluation (numpy, length ``n``)."""

    values: np.ndarray
    status: np.ndarray
    seconds: float
    chunks_resumed: int = 0

    @property
    def ok(self) -> np.ndarray:
        return self.status == 0

    @property
    def n_failed(self) -> int:
        return int(np.sum(~self.ok))


class ChunkStore:
    """Finished chunks on disk: ``chunk_000000.npz`` (values, status) and ``index.json``
    (the study's ``key``, n, chunk, done chunks).  A store whose key, n or chunk differ
    from the run's is refused, not mixed in."""

    def __init__(self, folder: str | Path, key: dict, n: int, chunk: int):
        self.folder = Path(folder)
        self.meta = {"key": key, "n": int(n), "chunk": int(chunk)}

    @property
    def index_path(self) -> Path:
        return self.folder / "index.json"

    def path(self, i: int) -> Path:
        return self.folder / f"chunk_{i:06d}.npz"

    def open(self, resume: bool) -> set[int]:
        """Prepare the folder; with ``resume`` return the chunks already done."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if resume and self.index_path.exists():
            doc = json.loads(self.index_path.read_text())
            if {k: doc.get(k) for k in self.meta} != json.loads(json.dumps(self.meta)):
                raise ValueError(f"{self.folder}: the stored run has other settings "
                                 f"({doc.get('key')}, n={doc.get('n')}, chunk="
                                 f"{doc.get('chunk')}); rerun without --resume to start over")
            return {i for i in doc.get("done", []) if self.path(i).exists()}
        for old in self.folder.glob("chunk_*.npz"):
            old.unlink()
        self._write_index(set())
        return set()

    def _write_index(self, done: set[int]) -> None:
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.meta, "done": sorted(done)}, indent=1))
        tmp.replace(self.index_path)

    def save(self, i: int, values: np.ndarray, status: np.ndarray, done: set[int]) -> None:
        tmp = self.folder / f".chunk_{i:06d}.tmp.npz"
        np.savez(tmp, values=values, status=status)
        tmp.replace(self.path(i))
        done.add(i)
        self._write_index(done)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.path(i)) as z:
            return z["values"], z["status"]


def _progress_line(done: int, total: int, items: int, elapsed: float, run_items: int):
    rate = run_items / elapsed if elapsed > 0 and run_items else float("nan")
    left = (total - done) * (items / max(done, 1)) / rate if rate == rate and rate > 0 else 0
    eta = f"{left:6.1f}s left" if run_items else ""
    return (f"\r  chunk {done}/{total}, {items} items, {elapsed:6.1f}s, "
            f"{rate:,.0f}/s {eta}")


def map_chunks(
    fn: Callable,
    make_chunk: Callable[[int, int], object],
    n: int,
    *,
    chunk: int = DEFAULT_CHUNK,
    store: ChunkStore | None = None,
    resume: bool = False,
    progress: bool | Callable[[str], None] = False,
) -> Evaluation:
    """Stream ``n`` items through ``fn`` chunk by chunk.

    **Arguments:**

    - `fn`: chunk inputs -> ``(values (c, ...), status (c,))`` (jitted by the caller);
      values may carry trailing axes (e.g. a bootstrap refit's columns), the same per chunk.
    - `make_chunk`: ``(lo, hi) -> inputs`` of items ``lo .. hi-1``.
    - `n`: number of items; `chunk`: items per call (the last chunk may be shorter).
    - `store`: where finished chunks go (None: memory only); `resume`: reuse its chunks.
    - `progress`: True prints a line with a time estimate on stderr (or a callable).

    **Returns:**

    :class:`Evaluation` with ``values`` (float64, ``(n, ...)``) and ``status`` (int32,
    ``(n,)``).
    """
    if n < 1 or chunk < 1:
        raise ValueError(f"need n >= 1 and chunk >= 1, got n={n}, chunk={chunk}")
    say = (progress if callable(progress) else
           (lambda s: print(s, end="", file=sys.stderr, flush=True)) if progress else None)
    n_chunks = -(-n // chunk)
    values = None  # allocated from the first chunk's trailing shape
    status = np.full(n, -1, np.int32)

    def put(lo, hi, v, s):
        nonlocal values
        if values is None:
            values = np.full((n,) + v.shape[1:], np.nan)
        values[lo:hi], status[lo:hi] = v, s

    done = store.open(resume) if store is not None else set()
    resumed = 0
    for i in sorted(done):
        assert store is not None  # done is empty without a store
        lo, hi = i * chunk, min(n, (i + 1) * chunk)
        put(lo, hi, *store.load(i))
        resumed += 1
    t0 = time.perf_counter()
    run_items = 0
    for i in range(n_chunks):
        if i in done:
            continue
        lo, hi = i * chunk, min(n, (i + 1) * chunk)
        v, s = fn(make_chunk(lo, hi))
        v, s = np.asarray(v, np.float64), np.asarray(s, np.int32)
        put(lo, hi, v, s)
        run_items += hi - lo
        if store is not None:
            store.save(i, v, s, done)
        else:
            done.add(i)
        if say:
            say(_progress_line(len(done), n_chunks, int(np.sum(status >= 0)),
                               time.perf_counter() - t0, run_items))
    if say:
        say("\n")
    assert values is not None  # every chunk was put
    return Evaluation(values, status, time.perf_counter() - t0, resumed)


def no_planting(forcing: Forcing) -> Forcing:
    """The same forcing with planting effort 0 (the counterfactual scenario)."""
    return dataclasses.replace(forcing, psi_plant=jnp.zeros_like(forcing.psi_plant))


def qoi_fn(qoi: QoI, forcing: Forcing, **ensemble_kwargs) -> Callable:
    """``Params (c,) -> (values, status)``: the solves a QoI needs (``simulate_ensemble``
    per scenario; none for ``V_crit``) and the QoI vmapped over the chunk."""
    scen = {"actual": forcing, "no_planting": no_planting(forcing)}
    unknown = set(qoi.scenarios) - set(scen)
    if unknown:
        raise ValueError(f"QoI {qoi.name}: unknown scenario(s) {sorted(unknown)}")

    @jax.jit
    def reduce(params, sims):
        vals = jax.vmap(qoi.fn)(params, sims)
        st = jnp.zeros(vals.shape, jnp.int32)
        for s in sims:
            st = jnp.maximum(st, s.status)
        st = jnp.where((st == 0) & ~jnp.isfinite(vals), QOI_NONFINITE, st)
        return vals, st

    def fn(params: Params):
        sims = tuple(simulate_ensemble(params, scen[k], **ensemble_kwargs)
                     for k in qoi.scenarios)
        return reduce(params, sims)

    return fn


def evaluate(
    params: Params | Callable[[int, int], Params],
    forcing: Forcing,
    qoi: QoI,
    *,
    n: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    store: ChunkStore | None = None,
    resume: bool = False,
    progress: bool = False,
    **ensemble_kwargs,
) -> Evaluation:
    """A quantity of interest for every member of a batch of parameter sets.

    **Arguments:**

    - `params`: ``Params`` with leaves ``(n,)`` (their dtype sets the precision), or a
      function ``(lo, hi) -> Params`` that builds members ``lo..hi-1`` (then give ``n``; a
      1M-member study then never holds more than one chunk of parameters either).
    - `forcing`: annual forcing of the ``"actual"`` scenario.
    - `qoi`: a :class:`QoI` (``make_qoi``).
    - `chunk`, `store`, `resume`, `progress`: see :func:`map_chunks`.
    - `ensemble_kwargs`: passed to ``simulate_ensemble`` (e.g. ``devices``, ``kernel``).

    **Returns:**

    :class:`Evaluation` (values in the QoI's units, float64 on the host).
    """
    if callable(params):
        if n is None:
            raise ValueError("give n when params is a function of (lo, hi)")
        make = params
    else:
        n = int(jnp.shape(params.r_V)[0])
        make = lambda lo, hi: jax.tree_util.tree_map(lambda x: x[lo:hi], params)  # noqa: E731
    return map_chunks(qoi_fn(qoi, forcing, **ensemble_kwargs), make, n, chunk=chunk,
                      store=store, resume=resume, progress=progress)
