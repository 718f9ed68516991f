"""The Dockerfile, checked without a Docker engine: hadolint, and its build replayed from the build context.

The build stage is replayed as written: the files ``.dockerignore`` lets into the context, copied where its COPY
lines put them, built into a wheel the way ``pip install .`` does, installed alone into a fresh virtualenv (the
third-party runtime dependencies come from the test venv). What the image then runs — its ENTRYPOINT against its
shipped configuration, its HEALTHCHECK against a live admin port — is run for real.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from proxy.config import parse_config
from tests.deploy.dockerfile import Instruction, context_files, copy_sources, healthcheck_command, parse
from tests.support.procs import ROOT, Sidecar
from tests.support.redis_servers import free_port

DOCKERFILE = parse(ROOT / "Dockerfile")
FINAL = max(i.stage for i in DOCKERFILE)
CONFIG_PATH = "/etc/wxgate/proxy.yaml"  # the documented path (README, docs/deployment.md)
STATE_DIR = "/var/lib/wxgate"


def final(keyword: str) -> list[Instruction]:
    return [i for i in DOCKERFILE if i.stage == FINAL and i.keyword == keyword]


def one(keyword: str) -> Instruction:
    (instr,) = final(keyword)
    return instr


def shipped_config_source() -> Path:
    for instr in final("COPY"):
        sources, dest = copy_sources(instr)
        if dest == CONFIG_PATH:
            return ROOT / sources[0]
    raise AssertionError(f"no COPY puts a configuration at {CONFIG_PATH}")


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint missing: it comes with the test extra (pip install -e '.[test]')"
    out = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "")


def test_every_stage_uses_the_same_pinned_slim_python_312() -> None:
    images = {i.args.split()[0] for i in DOCKERFILE if i.keyword == "FROM"}
    assert len(images) == 1
    assert re.fullmatch(r"python:3\.12\.\d+-slim-[a-z]+", images.pop())


def test_runs_as_an_unprivileged_user_with_the_state_volume_as_home() -> None:
    uid = one("USER").args.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000
    (create,) = [i for i in final("RUN") if "useradd" in i.args]
    assert f"--uid {uid}" in create.args and f"--home-dir {STATE_DIR}" in create.args
    assert f"-o wxgate -g wxgate -m 0750 {STATE_DIR}" in create.args  # the user can write its state
    assert one("VOLUME").exec_form() == [STATE_DIR]
    assert f"HOME={STATE_DIR}" in one("ENV").args


def test_only_runtime_dependencies_are_installed() -> None:
    installs = [i for i in DOCKERFILE if i.keyword == "RUN" and "pip install" in i.args]
    assert installs
    for instr in installs:
        targets = [a for a in instr.args.split("pip install", 1)[1].split("&&")[0].split() if a[0] != "-"]
        assert targets == ["."], instr.args  # the package itself: no extras, no editable install
    assert not any(i.keyword == "RUN" and "apt-get" in i.args for i in DOCKERFILE)


def test_ports_paths_entrypoint_and_healthcheck_agree_with_the_shipped_configuration() -> None:
    cfg = parse_config(yaml.safe_load(shipped_config_source().read_text()), {"WECHAT_TOKEN": "t"})
    exposed = {int(p) for p in one("EXPOSE").args.split()}
    assert exposed == {cfg.listen_addr[1], cfg.admin_addr[1]}
    assert cfg.listen_addr[0] == cfg.admin_addr[0] == "0.0.0.0"  # reachable from outside the container
    assert cfg.store == f"sqlite://{STATE_DIR}/state.db"
    assert one("ENTRYPOINT").exec_form() == ["wxgate", "-c", CONFIG_PATH]
    assert one("CMD").exec_form() == ["run"]
    probe = " ".join(healthcheck_command(one("HEALTHCHECK")))
    assert f"http://127.0.0.1:{cfg.admin_addr[1]}/healthz" in probe
    for doc in ("README.md", "docs/deployment.md"):
        assert CONFIG_PATH in (ROOT / doc).read_text(), doc


def test_docker_examples_publish_the_admin_port_on_loopback_only() -> None:
    # `-p 9090:9090` (or `-p 0.0.0.0:9090:9090`) would put /metrics on every interface of the host.
    for doc in ("Dockerfile", "docs/deployment.md", "README.md"):
        for host_part in re.findall(r"-p\s+(\S+):9090\b", (ROOT / doc).read_text()):
            assert host_part.startswith("127.0.0.1:"), (doc, host_part)
    assert re.search(r"-p 127\.0\.0\.1:9090:9090", (ROOT / "Dockerfile").read_text())
    assert re.search(r"-p 127\.0\.0\.1:9090:9090", (ROOT / "docs/deployment.md").read_text())


@dataclass
class Image:
    """The replayed image: its virtualenv and the files the final stage copied, under one directory."""

    root: Path
    wheel: Path

    @property
    def bin(self) -> Path:
        return self.root / "opt/wxgate/bin"

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    def run(self, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin / args[0]) if args[0] in ("wxgate", "python") else args[0], *args[1:]]
        argv = [str(self.path(a)) if a == CONFIG_PATH else a for a in argv]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.root,
            env={"PATH": "/usr/bin:/bin", **env},
        )


def destination(source: str, f: str, dest: str, many: bool) -> str:
    """Where ``COPY source dest`` puts context file ``f``: a directory's contents go into ``dest``."""
    if f == source:
        return str(Path(dest) / Path(f).name) if dest.endswith("/") or many else dest
    return str(Path(dest) / Path(f).relative_to(source))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    root = tmp_path_factory.mktemp("image")
    context = set(context_files(ROOT, ROOT / ".dockerignore"))
    src = root / "src"
    for instr in DOCKERFILE:
        if instr.stage != 0 or instr.keyword != "COPY":
            continue
        sources, dest = copy_sources(instr)
        for source in sources:
            inside = [f for f in context if f == source or f.startswith(source + "/")]
            assert inside, f"COPY {source}: not in the build context (see .dockerignore)"
            for f in inside:
                target = src / destination(source, f, dest, many=len(sources) > 1)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, target)
    dist = root / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dist), str(src)], check=True, timeout=300)
    (wheel,) = dist.glob("wxgate-*.whl")
    venv = root / "opt/wxgate"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python3.*/site-packages"))
    # Third-party runtime dependencies from the test venv; the package itself only from the wheel.
    (site / "runtime_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = str(venv / "bin/python")
    subprocess.run([*pip, "--python", python, "install", "--no-deps", "--no-index", str(wheel)], check=True)
    for instr in final("COPY"):
        sources, dest = copy_sources(instr)
        if "--from" not in instr.args:
            target = root / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / sources[0], target)
    yield Image(root, wheel)


def test_the_wheel_built_from_the_context_holds_every_module(image: Image) -> None:
    names = set(zipfile.ZipFile(image.wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for d in ("proxy", "addons") for p in (ROOT / d).rglob("*.py")}
    assert modules - names == set()
    assert not any(n.startswith("tests/") for n in names)


def test_the_entrypoint_runs_the_installed_package_on_the_shipped_configuration(image: Image) -> None:
    where = image.run(["python", "-c", "import proxy.app, addons.tls; print(proxy.app.__file__)"], {})
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(image.root / "opt/wxgate/lib"))
    entry = one("ENTRYPOINT").exec_form() or []
    ok = image.run([*entry, "check"], {"WECHAT_TOKEN": "from-the-env"})
    assert ok.returncode == 0, ok.stderr
    assert f"{image.path(CONFIG_PATH)}: ok (1 routes)" in ok.stdout
    assert "from-the-env" not in ok.stdout
    missing = image.run([*entry, "check"], {})
    assert missing.returncode == 2
    assert "routes[0].token: environment variable WECHAT_TOKEN is not set" in missing.stderr


@pytest.mark.integration
def test_the_healthcheck_passes_on_a_live_admin_port_and_fails_without_one(
    image: Image, tmp_path: Path
) -> None:
    command = healthcheck_command(one("HEALTHCHECK"))
    s = Sidecar(tmp_path, {"routes": []})
    s.start()
    try:
        live = [c.replace("127.0.0.1:9090", f"127.0.0.1:{s.admin_port}") for c in command]
        assert image.run(live, {}).returncode == 0
    finally:
        s.stop()
    dead = [c.replace("127.0.0.1:9090", f"127.0.0.1:{free_port()}") for c in command]
    assert image.run(dead, {}).returncode != 0
