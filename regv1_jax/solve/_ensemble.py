"""``simulate_ensemble``: forward RK4 solves of a batch of parameter sets, at full speed.

The default call picks the fast configuration by itself:

* **Buckets.** The batch is padded (with copies of its first member) to a size bucket,
  eight per octave (at most 12.5% padding), so that a study whose batch sizes vary
  compiles a handful of shapes, not one per size.
* **Kernel (CPU).** On a CPU device the whole solve runs in a C++ kernel generated from
  ``initial_terms``, ``drivers``, ``rate_terms`` and ``observe_year`` (``kernel/``): one
  pass over a block of members per right-hand-side evaluation, parameter- and driver-only
  terms hoisted, annual outputs computed in the kernel and written in their final layout
  (NaN for a member whose state did not stay finite), OpenMP threads over blocks on every
  core.  XLA does no pass over the batch: the padding is added and dropped on the host
  (numpy views, no copy of the outputs, nothing compiled per batch size), and the kernel
  does not solve it (the true size is a traced operand).
* **XLA (any device, or no compiler).** The batch-last state ``(D, B)`` inside ``lax.scan``,
  on CPU in chunks sized to the L2 cache (``chunk_size``); small batches (``<= SMALL_BATCH``)
  take ``vmap`` of the per-sample solve, which has fewer, smaller kernels.
* **Devices.** On the XLA path with more than one device (GPUs, or CPU cores exposed as
  devices with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before jax is
  imported) each device's share, padded to a bucket on that device, runs there under
  ``shard_map``.  The CPU kernel runs on the first device and its threads use every core
  (CPU devices are the same cores; splitting the batch over them measured no faster).

Every path gives the numbers of ``jax.vmap(lambda q: simulate(q, forcing, method="rk4"))``
member by member (``tests/test_ensemble.py``: 1e-12 in float64, 1e-5 in float32).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from ..model import N_LAG_DEFAULT, Forcing, Layout, Params, driver_series
from . import kernel as _kernel
from ._simulate import NONFINITE, OK, Simulation, observe, simulate, with_forcing
from ._solvers import rk4_grid

__all__ = ["simulate_ensemble", "bucket_size", "chunk_size", "SMALL_BATCH", "ensemble_hlo"]

# At or below this many members the XLA path vmaps the per-sample solve.
SMALL_BATCH = 64
# XLA path: fewer members than this per device run on one device; splitting a small batch
# costs more in synchronisation than it saves.
SHARD_MIN_PER_DEVICE = 1024
# Members per XLA chunk per MiB of L2 cache and per state component and byte: tuned on the
# 2-core AVX-512 CI machine (1 MiB L2 per core): float32 chunks of 1024-2048 ran 25% faster
# than 4096 (issue 12), i.e. about 16 live (chunk, D) arrays per right-hand side in L2.
_LIVE_ARRAYS = 16


def bucket_size(n: int, granule: int = 1) -> int:
    """The padded batch size for ``n`` members: eight buckets per octave (at most 12.5%
    padding), rounded up to a multiple of ``granule``."""
    if n < 1:
        raise ValueError(f"an ensemble needs at least one member, got {n}")
    q = 1 << max(n.bit_length() - 4, 0)  # 2^(floor(log2 n) - 3)
    m = -(-n // q) * q
    return -(-m // granule) * granule


@functools.cache
def _l2_bytes() -> int:
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index2/size") as fh:
            s = fh.read().strip().upper()
        mult = {"K": 1 << 10, "M": 1 << 20}.get(s[-1], 1)
        return int(s.rstrip("KM")) * mult
    except (OSError, ValueError):
        return 1 << 20


def _cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def chunk_size(n_state: int, dtype) -> int:
    """Members per chunk of the XLA path on CPU: a power of two sized to the L2 cache."""
    c = _l2_bytes() // (n_state * np.dtype(dtype).itemsize * _LIVE_ARRAYS)
    return int(min(max(1 << max(c.bit_length() - 1, 0), 256), 8192))


def _status(ys):
    finite = jnp.all(jnp.isfinite(ys), axis=(0, 1))
    return jnp.where(finite, OK, NONFINITE).astype(jnp.int32)


def _observe_batch(ys, params, forcing, layout):
    """``Simulation`` with a leading batch axis from the grid ``(G, D, B)``, the status from
    the finiteness of each member's grid."""
    return jax.vmap(lambda y, s, q: observe(y, s, q, forcing, layout), in_axes=(2, 0, 0))(
        ys, _status(ys), params)


def _xla_solve(params, forcing, layout, steps_per_year, chunk):
    B = jnp.shape(params.r_V)[0]
    if B <= SMALL_BATCH and not chunk:
        return jax.vmap(lambda q: simulate(q, forcing, method="rk4",
                                           steps_per_year=steps_per_year,
                                           n_lag=layout.n_lag))(params)
    if chunk and B > chunk:
        n_chunks = -(-B // chunk)
        pad = n_chunks * chunk - B
        padded = jax.tree_util.tree_map(
            lambda x: jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,))]), params)
        chunks = jax.tree_util.tree_map(lambda x: x.reshape(n_chunks, chunk), padded)
        ys = jax.lax.map(lambda q: rk4_grid(q, forcing, layout, steps_per_year,
                                            unroll=True), chunks)  # (C, G, D, chunk)
        ys = jnp.moveaxis(ys, 0, -2).reshape(ys.shape[1:3] + (n_chunks * chunk,))[..., :B]
    else:
        ys = rk4_grid(params, forcing, layout, steps_per_year, unroll=True)  # (G, D, B)
    return _observe_batch(ys, params, forcing, layout)


@functools.partial(jax.jit, static_argnames=("steps_per_year", "target", "threads"))
def _run_kernel(prm, forcing, nvalid, *, steps_per_year, target, threads):
    """The kernel path: ``prm`` the parameters (``Params``) or their leaves stacked
    ``(NP, B)``, of which the first ``nvalid`` (traced: one compile per bucket) are
    solved."""
    if not isinstance(prm, jax.Array):
        prm = jnp.stack(jax.tree_util.tree_leaves(prm))
    forcing = forcing.astype(prm.dtype)
    # The year's drivers are computed in the kernel from the shared forcing (once per year
    # and block; as an XLA pass over (years, B) their powers were 6% of a float64 solve).
    fv = jnp.stack(driver_series(forcing), axis=1)  # (NY, 4)
    fields, finite = _kernel.rk4_observed(target, prm, fv, steps_per_year, threads, nvalid)
    status = jnp.where(finite == 1, OK, NONFINITE).astype(jnp.int32)
    return with_forcing(fields, status, forcing)


@functools.partial(jax.jit, static_argnames=("n_lag", "steps_per_year", "chunk", "devices"))
def _run(params, forcing, counts, *, n_lag, steps_per_year, chunk, devices):
    """The XLA path.  ``counts`` (one int32 per device, traced: one compile per bucket): the
    members of each device's share before its bucket padding (the XLA path solves the
    padding too)."""
    layout = Layout(n_lag)
    forcing = forcing.astype(params.dtype)

    def local(q, f, n):
        return _xla_solve(q, f, layout, steps_per_year, chunk)

    if devices is None or len(devices) == 1:
        return local(params, forcing, counts)
    mesh = Mesh(np.asarray(devices), ("batch",))
    spec = PartitionSpec("batch")
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, PartitionSpec(), spec),
                         out_specs=spec, check_vma=False)(params, forcing, counts)


@functools.partial(jax.jit, static_argnames=("shards", "size"))
def _pad(params, shards, size):
    """Split every leaf into ``shards`` equal parts and pad each to ``size`` members with
    copies of its first member (the padding of each device's share sits on that device)."""
    def pad(x):
        x = x.reshape(shards, -1)
        fill = jnp.broadcast_to(x[:, :1], (shards, size - x.shape[1]))
        return jnp.concatenate([x, fill], axis=1).reshape(-1)

    return jax.tree_util.tree_map(pad, params)


@functools.partial(jax.jit, static_argnames=("shards", "size"))
def _unpad(out, shards, size):
    """The inverse of :func:`_pad` on the outputs: the first ``size`` members of each of the
    ``shards`` parts.  A slice of each device's own rows, so no data crosses devices (slicing
    the padded batch as a whole made XLA move the rows between devices: 5-10% of a call)."""
    def unpad(x):
        return x.reshape((shards, -1) + x.shape[1:])[:, :size].reshape((-1,) + x.shape[1:])

    return jax.tree_util.tree_map(unpad, out)


def simulate_ensemble(
    params: Params,
    forcing: Forcing,
    *,
    steps_per_year: int = 12,
    n_lag: int = N_LAG_DEFAULT,
    chunk: int | None | str = "auto",
    kernel: bool | str = "auto",
    devices=None,
    bucket: bool = True,
) -> Simulation:
    """Forward RK4 solves of a batch of parameter sets (every leaf of shape ``(B,)``).

    The same numbers as ``jax.vmap(lambda q: simulate(q, forcing, method="rk4"))(params)``
    (to 1e-12 in float64, 1e-5 in float32), at the speed the hardware allows: see the module
    docstring for what the default does.  Forward only; for gradients use ``simulate``.

    **Arguments:**

    - `params`: parameters with a leading batch axis ``(B,)`` on every leaf (e.g.
      ``space.sample_prior(key, B)``); their dtype sets the precision.
    - `forcing`: annual forcings, shared by every member.
    - `steps_per_year`: even number of RK4 steps per year.
    - `n_lag`: length of the linear-chain lags.
    - `chunk`: members per ``lax.map`` chunk on the XLA path; ``"auto"`` sizes it to the L2
      cache on CPU (none on other devices); ``None`` for one whole-batch loop.
    - `kernel`: ``"auto"`` uses the generated C++ kernel on CPU devices when it builds;
      ``False`` forces the XLA path; ``True`` raises if the kernel is unavailable.
    - `devices`: devices to split the batch over on the XLA path (default
      ``jax.devices()``); a batch of fewer than ``SHARD_MIN_PER_DEVICE`` members per device
      runs on the first one.  The CPU kernel runs on the first and uses every core.
    - `bucket`: pad the batch to a size bucket (one compile per bucket, not per size).

    **Returns:**

    A :class:`Simulation` with a leading batch axis ``(B, ...)`` and a per-member ``status``
    (``NONFINITE`` where the member's state became NaN/inf; its outputs are NaN).
    """
    leaves = jax.tree_util.tree_leaves(params)
    shapes = {np.shape(x) for x in leaves}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"every parameter needs one batch axis of the same length; got "
                         f"shapes {sorted(shapes)}")
    B = next(iter(shapes))[0]
    if steps_per_year < 2 or steps_per_year % 2:
        raise ValueError(f"steps_per_year must be an even int >= 2, got {steps_per_year}")
    dtype = np.dtype(params.dtype)
    layout = Layout(n_lag)
    devices = tuple(jax.devices() if devices is None else devices)
    platform = devices[0].platform
    target = None
    if kernel and platform == "cpu":
        target = _kernel.target(params, layout, dtype)
        if target is None and kernel is True:
            raise RuntimeError("the RK4 kernel is not available (no C++ compiler, or the "
                               "build failed); use kernel='auto' or False")
    if target is not None:
        return _kernel_ensemble(params, forcing, B, steps_per_year=steps_per_year,
                                target=target, size=bucket_size(B) if bucket else B,
                                device=devices[0])
    if len(devices) > 1 and B < SHARD_MIN_PER_DEVICE * len(devices):
        devices = devices[:1]
    if chunk == "auto":
        chunk = chunk_size(layout.size, dtype) if platform == "cpu" else None
    # Each device gets an equal share of the members, padded to a bucket on that device.
    # Where the devices do not divide B, the one share of the batch is padded at its end.
    shards = len(devices) if B % len(devices) == 0 else 1
    share = B // shards
    size = bucket_size(share) if bucket else share
    size = -(-size * shards // len(devices)) * len(devices) // shards  # devices divide it
    counts = np.full(shards, share, np.int32)
    if shards == 1 and len(devices) > 1:  # contiguous padding: the later devices hold it
        per = size // len(devices)
        counts = np.clip(B - per * np.arange(len(devices)), 0, per).astype(np.int32)
    if size != share:
        params = _pad(params, shards, size)
    out = _run(params, forcing, counts, n_lag=n_lag, steps_per_year=steps_per_year,
               chunk=chunk or None, devices=devices if len(devices) > 1 else None)
    return _unpad(out, shards, share) if size != share else out


def _kernel_ensemble(params, forcing, B, *, steps_per_year, target, size, device):
    """The CPU kernel path: one kernel call on ``device`` whose OpenMP threads use every core
    this process may run on (CPU devices share the same cores: once XLA does no work per
    member, splitting the batch over them measured equal or slower).

    The parameters are stacked and padded to ``size`` members on the host, and the padding
    is dropped there: numpy views of CPU buffers, so the results are prefixes of the
    kernel's own arrays (no copy of the outputs) and nothing is compiled per batch size (a
    jitted pad or slice compiles once per size).  Inside a caller's ``jit`` (traced
    parameters) the padding is part of the caller's graph instead.  The kernel does not solve
    the padding.
    """
    run = functools.partial(_run_kernel, steps_per_year=steps_per_year, target=target,
                            threads=_cores())
    if size == B:  # stacked in the jitted call
        return run(params, forcing, np.int32(B))
    leaves = jax.tree_util.tree_leaves(params)
    if any(isinstance(x, jax.core.Tracer) for x in leaves):  # inside a caller's jit
        return _unpad(run(_pad(params, 1, size), forcing, np.int32(B)), 1, B)
    prm = np.empty((len(leaves), size), np.dtype(params.dtype))
    for j, x in enumerate(leaves):
        prm[j, :B] = np.asarray(x)
    prm[:, B:] = prm[:, :1]
    out = run(jax.device_put(prm, device), forcing, np.int32(B))
    fields, treedef = jax.tree_util.tree_flatten(out)
    return jax.tree_util.tree_unflatten(
        treedef, jax.device_put([np.asarray(x)[:B] for x in fields], device))


def ensemble_hlo(params: Params, forcing: Forcing, *, steps_per_year: int = 12,
                 n_lag: int = N_LAG_DEFAULT, kernel: bool = True, threads: int = 1) -> str:
    """The optimised HLO text of the compiled ensemble call for a batch like ``params``
    (an introspection hook for tests and benchmarks): with ``kernel`` the CPU kernel path
    (one custom call; the kernel must be available), else the XLA path on one device
    without chunks.  Nothing is run."""
    layout = Layout(n_lag)
    B = int(np.shape(jax.tree_util.tree_leaves(params)[0])[0])
    if kernel:
        name = _kernel.target(params, layout, np.dtype(params.dtype))
        if name is None:
            raise RuntimeError("the RK4 kernel is not available on this machine")
        prm = jnp.stack(jax.tree_util.tree_leaves(params))
        lowered = _run_kernel.lower(prm, forcing, np.int32(B), steps_per_year=steps_per_year,
                                    target=name, threads=threads)
    else:
        lowered = _run.lower(params, forcing, np.array([B], np.int32), n_lag=n_lag,
                             steps_per_year=steps_per_year, chunk=None, devices=None)
    text = lowered.compile().as_text()
    assert text is not None
    return text
