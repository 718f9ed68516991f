"""The documentation a newcomer reads: the generated configuration reference is current, links resolve, metric
names exist, and the README's quick start works exactly as written."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from proxy.config.reference import render, undocumented
from proxy.observability.metrics import Metrics
from tests.support.procs import ROOT, http, wait_until

README = ROOT / "README.md"
OURS = [README, ROOT / "docs/configuration.md", ROOT / "docs/deployment.md", ROOT / "docs/operations.md"]
DEMO_PORTS = (8080, 9090, 9000)  # what `make run` binds, as the README says


def test_the_configuration_reference_is_current() -> None:
    current = (ROOT / "docs/configuration.md").read_text()
    assert current == render(), "docs/configuration.md is stale: run `make docs` and commit it"


def test_every_configuration_key_has_a_description() -> None:
    assert undocumented() == [], "add a docstring under each of these fields in proxy/config.py"


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", doc.read_text(), re.MULTILINE)}


@pytest.mark.parametrize("doc", OURS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        assert resolved.exists(), f"{doc.name}: link to {target}: no such file"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{doc.name}: link to {target}: no such heading"


def test_metric_names_in_the_docs_exist() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}
    names = set()
    for family in registry.collect():
        names |= {family.name, *(family.name + s for s in suffixes.get(family.type, ()))}
    for doc in OURS:
        for name in set(re.findall(r"\bwxgate_[a-z_]+[a-z]", doc.read_text())):
            assert name in names, f"{doc.name} mentions {name}, which wxgate does not export"


def quick_start_blocks() -> list[list[str]]:
    section = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    return [[line.split(" #")[0].strip() for line in b.splitlines() if line.strip()] for b in blocks]


def test_the_quick_start_is_the_two_commands() -> None:
    assert quick_start_blocks()[0] == ["make run", "make test"]


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.integration
def test_the_readme_walkthrough_gets_a_verified_callback_onto_metrics(tmp_path: Path) -> None:
    busy = [p for p in DEMO_PORTS if _busy(p)]
    if busy:
        pytest.skip(f"ports {busy} are in use (another `make run`?): the README's commands need them")
    env = {k: v for k, v in os.environ.items() if k != "WECHAT_TOKEN"}  # the README's demo token
    log = (tmp_path / "make-run.log").open("wb")
    run = subprocess.Popen(
        ["make", "run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:

        def ready() -> bool:
            if run.poll() is not None:
                raise RuntimeError((tmp_path / "make-run.log").read_text()[-3000:])
            return http("GET", "http://127.0.0.1:9090/readyz", timeout=1)[0] == 200

        wait_until(ready, 120, "make run")  # first use: make also sets up .venv
        results = {}
        for command in quick_start_blocks()[1]:
            out = subprocess.run(
                ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
            )
            results[command] = out
        send = results[".venv/bin/wxgate send"]
        assert send.returncode == 0, send.stdout + send.stderr
        assert "attempt 1: status 200" in send.stdout and "echo: hello from wxgate send" in send.stdout
        verify = results[".venv/bin/wxgate send verify"]
        assert verify.returncode == 0 and "status 200" in verify.stdout
        tamper = results[".venv/bin/wxgate send --tamper"]
        assert tamper.returncode == 1 and "attempt 1: status 403" in tamper.stdout
        (metrics_command,) = [c for c in results if c.startswith("curl")]
        metrics = results[metrics_command].stdout
        for code in ("200", "403"):
            line = re.search(
                rf'^wxgate_requests_total{{code="{code}",protocol="wechat-mp",route="mp"}} (\S+)$',
                metrics,
                re.MULTILINE,
            )
            assert line and float(line.group(1)) >= 1, metrics
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGTERM)
        try:
            run.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(5)
        log.close()
    deadline = time.monotonic() + 10
    while any(_busy(p) for p in DEMO_PORTS) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_busy(p) for p in DEMO_PORTS), "make run left a process listening"
