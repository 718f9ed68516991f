"""``workers: auto``: the CPU count from the cgroup quota files a container runtime writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cpus import available_cpus, cgroup_quota, resolve_workers


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v2_quota_of_the_process_cgroup(tmp_path: Path) -> None:
    write(tmp_path, "kubepods/pod1/cpu.max", "250000 100000\n")
    assert cgroup_quota(tmp_path, "0::/kubepods/pod1\n") == 2.5


def test_v2_tightest_ancestor_wins(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "max 100000\n")
    write(tmp_path, "pods/cpu.max", "150000 100000\n")
    write(tmp_path, "pods/app/cpu.max", "max 100000\n")
    assert cgroup_quota(tmp_path, "0::/pods/app\n") == 1.5


def test_v2_inside_a_container_namespace(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "200000 100000\n")
    assert cgroup_quota(tmp_path, "0::/\n") == 2.0


def test_v2_no_limit(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "max 100000\n")
    assert cgroup_quota(tmp_path, "0::/\n") is None


def test_v1_cfs_quota(tmp_path: Path) -> None:
    write(tmp_path, "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n")
    write(tmp_path, "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    proc = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n"
    assert cgroup_quota(tmp_path, proc) == 3.0


def test_hybrid_host_reads_the_v1_cpu_controller(tmp_path: Path) -> None:
    write(tmp_path, "cpu/cpu.cfs_quota_us", "200000\n")
    write(tmp_path, "cpu/cpu.cfs_period_us", "100000\n")
    assert cgroup_quota(tmp_path, "0::/\n4:memory:/x\n1:cpu:/\n") == 2.0


def test_v1_unlimited(tmp_path: Path) -> None:
    write(tmp_path, "cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    write(tmp_path, "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert cgroup_quota(tmp_path, "4:cpu,cpuacct:/\n") is None


@pytest.mark.parametrize(
    ("quota", "expected"), [("50000 100000", 1), ("150000 100000", 1), ("100000 100000", 1)]
)
def test_rounded_down_at_least_one(tmp_path: Path, quota: str, expected: int) -> None:
    write(tmp_path, "cpu.max", quota)
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/\n")
    assert available_cpus(tmp_path, proc) == expected


def test_no_cgroup_files_means_the_affinity_mask(tmp_path: Path) -> None:
    import os

    assert available_cpus(tmp_path / "none", tmp_path / "none") == len(os.sched_getaffinity(0))


def test_resolve_workers() -> None:
    assert resolve_workers(3) == 3
    assert resolve_workers("auto") == available_cpus()
