"""deploy/compose: every file parses, every mounted path exists, and the services agree with each other — wxgate's
configuration, Prometheus's scrape target and rules (checked by promtool exactly as the container mounts them),
Grafana's provisioned dashboard and datasources, and the OTLP endpoint of the trace backend."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import Config, parse_config
from tests.support.procs import ROOT

COMPOSE_DIR = ROOT / "deploy/compose"
COMPOSE = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: str, environ: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR:-default}`` with an empty environment (what a fresh machine has)."""
    env = environ or {}
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)


def mounts(service: str) -> dict[str, Path]:
    """Bind mounts of ``service``: container path -> host path (named volumes left out)."""
    out = {}
    for spec in SERVICES[service].get("volumes", []):
        source, target = spec.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (COMPOSE_DIR / source).resolve()
    return out


def mounted(service: str, container_path: str) -> Path:
    """The host file that ``service`` sees at ``container_path`` (directly, or inside a mounted directory)."""
    for target, source in sorted(mounts(service).items(), key=lambda kv: -len(kv[0])):
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / Path(container_path).relative_to(target)
    raise AssertionError(f"{service}: nothing is mounted at {container_path}")


def env(service: str) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in SERVICES[service].get("environment", {}).items()}


def wxgate_config() -> Config:
    text = mounted("wxgate", "/etc/wxgate/proxy.yaml").read_text()
    return parse_config(yaml.safe_load(text), env("wxgate"))


def published(service: str) -> dict[int, str]:
    """Container port -> the host address it is published on (``host:port:container`` form only)."""
    out = {}
    for spec in SERVICES[service].get("ports", []):
        host, host_port, container_port = str(spec).rsplit(":", 2)
        out[int(container_port)] = f"{host}:{host_port}"
    return out


def url_target(url: str) -> tuple[str, int]:
    m = re.fullmatch(r"https?://([^:/]+):(\d+)/?.*", url)
    assert m, url
    return m.group(1), int(m.group(2))


def tempo() -> dict[str, Any]:
    flag = next(a for a in SERVICES["tempo"]["command"] if a.startswith("-config.file="))
    config: dict[str, Any] = yaml.safe_load(mounted("tempo", flag.split("=", 1)[1]).read_text())
    return config


def test_the_stack_has_every_part() -> None:
    assert set(SERVICES) == {"backend", "wxgate", "redis", "prometheus", "grafana", "tempo"}


def test_every_mounted_path_and_build_context_exists() -> None:
    for name in SERVICES:
        for target, source in mounts(name).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
    for name, svc in SERVICES.items():
        if "build" in svc:
            context = (COMPOSE_DIR / svc["build"]["context"]).resolve()
            assert (context / svc["build"]["dockerfile"]).is_file(), name


def test_images_are_pinned_and_ours_matches_the_project_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, svc in SERVICES.items():
        image = svc["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: {image} is not pinned to a release"
        if "build" in svc:
            assert image == f"wxgate:{version}"


def test_only_loopback_ports_are_published() -> None:
    for name in SERVICES:
        for host in published(name).values():
            assert host.startswith("127.0.0.1:"), (name, host)
    assert published("backend") == {}  # the legacy app is reached through wxgate only


def test_wxgate_configuration_is_valid_and_points_at_the_other_services() -> None:
    cfg = wxgate_config()
    host, port = url_target(cfg.upstream)
    assert host == "backend"
    command = SERVICES["backend"]["command"]
    assert command[command.index("--listen") + 1] == f"0.0.0.0:{port}"
    assert re.fullmatch(r"redis://redis:6379/\d+", cfg.store)
    assert "--appendonly" in SERVICES["redis"]["command"]
    assert set(published("wxgate")) == {cfg.listen_addr[1], cfg.admin_addr[1]}
    assert cfg.routes[0].token.reveal() == "wxgate-demo-token"  # type: ignore[union-attr]


def test_prometheus_scrapes_wxgate_and_loads_the_rules(tmp_path: Path) -> None:
    config_file = "/etc/prometheus/prometheus.yml"
    prom = yaml.safe_load(mounted("prometheus", config_file).read_text())
    (job,) = prom["scrape_configs"]
    assert job["job_name"] == "wxgate"
    (target,) = job["static_configs"][0]["targets"]
    assert target == f"wxgate:{wxgate_config().admin_addr[1]}"
    assert f"--config.file={config_file}" in SERVICES["prometheus"]["command"]
    # Lay the files out as the container sees them, and let promtool load the config and its rules.
    (tmp_path / "rules").mkdir()
    shutil.copy(mounted("prometheus", config_file), tmp_path / "prometheus.yml")
    for rule_file in prom["rule_files"]:
        source = mounted("prometheus", f"/etc/prometheus/{rule_file}")
        assert source.is_relative_to(ROOT / "dashboards"), "the rules are the repository's own"
        shutil.copy(source, tmp_path / rule_file)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool missing: `make deps` installs prometheus, which ships it")
    out = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(prom['rule_files'])} rule files found" in out.stdout
    assert len(re.findall(r"SUCCESS: [1-9]\d* rules found", out.stdout)) == len(prom["rule_files"])


def test_grafana_provisions_the_dashboard_and_both_datasources() -> None:
    providers = mounted("grafana", "/etc/grafana/provisioning/dashboards")
    (provider_file,) = [p for p in providers.iterdir() if p.suffix in (".yaml", ".yml")]
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    dashboards = mounted("grafana", provider["options"]["path"])
    assert (dashboards / "wxgate.json").is_file()

    datasources: dict[str, dict[str, Any]] = {}
    for target in mounts("grafana"):
        if target.startswith("/etc/grafana/provisioning/datasources/"):
            for ds in yaml.safe_load(mounted("grafana", target).read_text())["datasources"]:
                datasources[ds["uid"]] = ds
    prometheus = next(ds for ds in datasources.values() if ds["type"] == "prometheus")
    assert url_target(interpolate(prometheus["url"], env("grafana"))) == ("prometheus", 9090)
    # The dashboard's exemplars open their trace in the trace datasource: that uid must exist here.
    for link in prometheus["jsonData"]["exemplarTraceIdDestinations"]:
        traces = datasources[link["datasourceUid"]]
        assert url_target(traces["url"]) == ("tempo", tempo()["server"]["http_listen_port"])


def test_wxgate_sends_its_traces_to_the_trace_backend() -> None:
    host, port = url_target(env("wxgate")["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert host == "tempo"
    otlp_http = tempo()["distributor"]["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert otlp_http == f"0.0.0.0:{port}"  # Tempo >= 2.7 listens on localhost unless told otherwise
