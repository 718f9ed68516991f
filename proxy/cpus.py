"""How many CPUs this process may use, for ``workers: auto``.

``os.cpu_count()`` is the machine's count; a container or a pod limited to 2 CPUs on a 64-core node would start
64 workers that the kernel's CFS quota then throttles together. The count here is the smallest of: the CPU
affinity mask (``taskset``, cpusets) and the cgroup CPU quota, v2 ``cpu.max`` of this process's cgroup and each
ancestor (the tightest wins), or v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``; rounded down, at least 1 (a pod
limit of 1.5 CPUs gets one worker, which can still burst to the whole quota).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_quota(cgroup_root, _read(proc_cgroup))
    if quota is not None:
        count = min(count, math.floor(quota))
    return max(count, 1)


def resolve_workers(value: int | str) -> int:
    """The ``workers:`` setting as a number of processes."""
    return available_cpus() if value == "auto" else int(value)


def cgroup_quota(root: Path, proc_cgroup: str) -> float | None:
    """CPUs the cgroup quota allows (``None``: no quota), from ``/proc/self/cgroup``'s text.

    A v1 ``cpu`` controller wins over the v2 line: on a hybrid host (both listed) the v1 one holds the quota."""
    unified: str | None = None
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            unified = path
        elif "cpu" in controllers.split(","):
            return _v1_quota(root, controllers, path)
    return None if unified is None else _v2_quota(root, unified)


def _v2_quota(root: Path, path: str) -> float | None:
    # Inside a container's cgroup namespace its own cgroup is the root ("/"); outside, walk up to the root.
    best: float | None = None
    here = root / path.strip("/")
    while True:
        fields = _read(here / "cpu.max").split()
        if len(fields) == 2 and fields[0] != "max":
            quota = int(fields[0]) / int(fields[1])
            best = quota if best is None else min(best, quota)
        if here == root or root not in here.parents:
            return best
        here = here.parent


def _v1_quota(root: Path, controllers: str, path: str) -> float | None:
    for base in (root / controllers, root / "cpu,cpuacct", root / "cpu"):
        for here in (base / path.strip("/"), base):
            quota, period = (
                _read(here / "cpu.cfs_quota_us").strip(),
                _read(here / "cpu.cfs_period_us").strip(),
            )
            if quota and period:
                return None if int(quota) < 0 else int(quota) / int(period)
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
