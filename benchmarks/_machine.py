"""Machine, versions and load of a benchmark run (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform
import socket
import sys

PACKAGES = ("jax", "jaxlib", "diffrax", "equinox", "optax", "numpy", "scipy", "SALib", "numba")


def machine_info() -> dict:
    cpu_model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        affinity = None
    return dict(host=socket.gethostname(), platform=platform.platform(),
                machine=platform.machine(), python=sys.version.split()[0],
                cpu_count=os.cpu_count(), cpu_affinity=affinity, cpu_model=cpu_model)


def versions(names=PACKAGES) -> dict:
    import importlib.metadata as md

    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:  # pragma: no cover
        return None


def run_header() -> dict:
    """What every benchmark JSON starts with: machine, JAX devices, XLA flags, versions, load."""
    import time

    import jax

    return dict(machine=machine_info(), jax_devices=[str(d) for d in jax.devices()],
                jax_backend=jax.default_backend(), xla_flags=os.environ.get("XLA_FLAGS", ""),
                versions=versions(), loadavg_start=loadavg(),
                started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
