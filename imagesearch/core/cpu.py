"""How many cores this process may use."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the system has one
    (`taskset` or a cpuset may allow fewer than the machine has; a CPU quota such as
    `docker --cpus` is not seen), else the CPU count."""
    counted = getattr(os, "process_cpu_count", None)  # Python 3.13+: the affinity too
    if counted is not None:
        return max(1, counted() or 2)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call here
        return os.cpu_count() or 2
