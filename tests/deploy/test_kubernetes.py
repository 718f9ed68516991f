"""deploy/kubernetes: valid against the Kubernetes API schemas (offline, strict), and consistent with itself,
with the image and with wxgate's configuration: ports, probe paths, mounts, secret keys and labels agree."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import Config, ConfigError, parse_config
from tests.deploy.dockerfile import parse
from tests.support.procs import ROOT

K8S = ROOT / "deploy/kubernetes"
KUBERNETES_VERSION = "1.30.0"  # the oldest minor the manifests promise to work on
# No bundled schema for these: test_the_pod_monitor_scrapes_the_admin_port checks the PodMonitor.
CRDS = {("monitoring.coreos.com/v1", "PodMonitor")}


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def documents() -> list[tuple[str, dict[str, Any]]]:
    kustomization = load("kustomization.yaml")[0]
    return [(name, doc) for name in kustomization["resources"] for doc in load(name)]


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = find("Deployment")["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    (c,) = [c for c in pod_spec()["containers"] if c["name"] == name]
    return c


def port_of(c: dict[str, Any], name: str) -> int:
    (p,) = [p["containerPort"] for p in c.get("ports", []) if p["name"] == name]
    return int(p)


def secret_data() -> dict[str, str]:
    data: dict[str, str] = find("Secret")["stringData"]
    return data


def mount(c: dict[str, Any], volume: str) -> str:
    (path,) = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == volume]
    assert not any(m.get("subPath") for m in c["volumeMounts"] if m["name"] == volume)
    return str(path)


def filled_secrets() -> dict[str, str]:
    """The Secret as an operator fills it in: every ``replace-with-…`` placeholder replaced."""
    return {k: v.replace("replace-with-", "filled-in-") for k, v in secret_data().items()}


def wxgate_config(tmp_path: Path, data: dict[str, str] | None = None) -> Config:
    """The ConfigMap's proxy.yaml as the pod sees it: secret files and secret env vars in place."""
    data = filled_secrets() if data is None else data
    wx = container("wxgate")
    secrets_dir = mount(wx, "secrets")
    for key, value in data.items():
        (tmp_path / key).write_text(value)
    env = {e["name"]: data[e["valueFrom"]["secretKeyRef"]["key"]] for e in wx["env"] if "valueFrom" in e}
    text = find("ConfigMap")["data"]["proxy.yaml"].replace(secrets_dir + "/", f"{tmp_path}/")
    return parse_config(yaml.safe_load(text), env)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(load("kustomization.yaml")[0]["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize(
    ("name", "doc"),
    [(n, d) for n, d in documents() if (d["apiVersion"], d["kind"]) not in CRDS],
    ids=lambda v: v if isinstance(v, str) else v["kind"],
)
def test_every_manifest_matches_the_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # kubernetes-validate's own imports
        import kubernetes_validate

        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_config_map_is_a_valid_wxgate_configuration(tmp_path: Path) -> None:
    cfg = wxgate_config(tmp_path)
    assert cfg.routes and cfg.routes[0].token.reveal() == filled_secrets()["wechat-token"]  # type: ignore[union-attr]
    assert f":{filled_secrets()['redis-password']}@" in cfg.store


def test_the_shipped_placeholder_secrets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        wxgate_config(tmp_path, secret_data())
    assert "routes[0].token_file" in str(e.value) and "still holds a placeholder" in str(e.value)
    assert all(v not in str(e.value) for v in secret_data().values())


def test_the_service_targets_wxgate_and_never_the_app(tmp_path: Path) -> None:
    cfg = wxgate_config(tmp_path)
    service = find("Service", "legacy-app")
    labels = find("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port_of(container("wxgate"), port["targetPort"]) == cfg.listen_addr[1]
    assert cfg.listen_addr[0] == "0.0.0.0"
    assert "ports" not in container("app")  # the app is reachable on localhost only


def test_the_app_listens_where_wxgate_forwards(tmp_path: Path) -> None:
    cfg = wxgate_config(tmp_path)
    args = container("app")["args"]
    listen = args[args.index("--listen") + 1]
    assert cfg.upstream == f"http://{listen}"
    assert listen.startswith("127.0.0.1:")


def test_probes_use_the_admin_port_and_paths(tmp_path: Path) -> None:
    cfg = wxgate_config(tmp_path)
    wx = container("wxgate")
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = wx[probe]["httpGet"]
        assert port_of(wx, get["port"]) == cfg.admin_addr[1]
        paths[probe] = get["path"]
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    assert cfg.admin_addr[0] == "0.0.0.0"  # the kubelet probes the pod IP


def test_config_and_secrets_are_mounted_where_the_image_reads_them() -> None:
    wx = container("wxgate")
    entrypoint = next(i for i in parse(ROOT / "Dockerfile") if i.keyword == "ENTRYPOINT").exec_form() or []
    config_file = entrypoint[entrypoint.index("-c") + 1]
    assert f"{mount(wx, 'config')}/proxy.yaml" == config_file
    configmap_volume = next(v for v in pod_spec()["volumes"] if v["name"] == "config")
    assert configmap_volume["configMap"]["name"] == find("ConfigMap")["metadata"]["name"]
    assert "proxy.yaml" in find("ConfigMap")["data"]
    secrets_dir = mount(wx, "secrets")
    for line in find("ConfigMap")["data"]["proxy.yaml"].splitlines():
        if "_file:" in line and not line.strip().startswith("#"):
            path = line.split("_file:", 1)[1].split("#")[0].strip()
            assert path.startswith(secrets_dir + "/") and path.rsplit("/", 1)[1] in secret_data()
    assert mount(wx, "state") == "/var/lib/wxgate"


def test_every_secret_reference_exists() -> None:
    secret = find("Secret")["metadata"]["name"]
    for _, doc in documents():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            for e in c.get("env", []):
                if "valueFrom" in e:
                    ref = e["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == secret and ref["key"] in secret_data(), (c["name"], e["name"])


def test_replicas_share_a_redis_store_that_exists(tmp_path: Path) -> None:
    cfg = wxgate_config(tmp_path)
    assert find("Deployment")["spec"]["replicas"] > 1
    assert cfg.store.startswith("redis://")  # sqlite is one replica's own file
    host, port = cfg.store.rsplit("@", 1)[1].split("/")[0].split(":")
    redis = find("Service", host)
    assert int(port) in [p["port"] for p in redis["spec"]["ports"]]
    args = find("StatefulSet", host)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"  # the outbox survives a Redis restart


def test_the_pod_monitor_scrapes_the_admin_port() -> None:
    monitor = find("PodMonitor")
    labels = find("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    port_of(container("wxgate"), endpoint["port"])


def test_shutdown_gives_the_drain_time_to_finish(tmp_path: Path) -> None:
    cfg = wxgate_config(tmp_path)
    pause = int(container("wxgate")["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod_spec()["terminationGracePeriodSeconds"] > pause + cfg.drain_timeout


def test_containers_run_the_project_image_unprivileged_with_resources() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    uid = next(i for i in parse(ROOT / "Dockerfile") if i.keyword == "USER").args.split(":")[0]
    assert pod_spec()["securityContext"]["runAsUser"] == int(uid)
    for c in pod_spec()["containers"]:
        assert c["image"] == f"wxgate:{version}"
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False


def policy_for(labels: dict[str, str]) -> dict[str, Any]:
    """The one NetworkPolicy selecting pods with ``labels``, restricting ingress."""
    (policy,) = [
        d
        for _, d in documents()
        if d["kind"] == "NetworkPolicy" and d["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert "Ingress" in policy["spec"]["policyTypes"]
    return policy


def rules_by_port(policy: dict[str, Any], c: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """Each ingress rule's ``from`` peers by the container port it opens (named ports resolved on ``c``)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("ports"), "a rule without ports opens every port"
        assert rule.get("from"), "a rule without from admits every source"
        for p in rule["ports"]:
            port = p["port"] if isinstance(p["port"], int) else port_of(c, p["port"])
            out.setdefault(port, []).extend(rule["from"])
    return out


def test_only_prometheus_reaches_the_admin_port_and_callbacks_come_from_the_ingress(tmp_path: Path) -> None:
    cfg = wxgate_config(tmp_path)
    labels = find("Deployment")["spec"]["template"]["metadata"]["labels"]
    by_port = rules_by_port(policy_for(labels), container("wxgate"))
    # Nothing else is open: not the app's port (localhost only anyway), not any other.
    assert set(by_port) == {cfg.listen_addr[1], cfg.admin_addr[1]}
    (scraper,) = by_port[cfg.admin_addr[1]]
    # Both selectors in one peer (an AND): Prometheus pods in the monitoring namespace, not the whole namespace
    # nor every pod labelled prometheus anywhere.
    assert scraper["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert scraper["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert "ipBlock" not in scraper
    (ingress,) = by_port[cfg.listen_addr[1]]
    assert set(ingress) == {"namespaceSelector"}
    # The PodMonitor scrapes the port the policy opens to Prometheus.
    (endpoint,) = find("PodMonitor")["spec"]["podMetricsEndpoints"]
    assert port_of(container("wxgate"), endpoint["port"]) == cfg.admin_addr[1]


def test_only_the_wxgate_pods_reach_redis() -> None:
    redis = find("StatefulSet", "wxgate-redis")["spec"]["template"]
    (redis_container,) = redis["spec"]["containers"]
    by_port = rules_by_port(policy_for(redis["metadata"]["labels"]), redis_container)
    assert set(by_port) == {6379}
    (peer,) = by_port[6379]
    labels = find("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert set(peer) == {"podSelector"} and peer["podSelector"]["matchLabels"].items() <= labels.items()


def test_replicas_share_one_log_hash_key(tmp_path: Path) -> None:
    cfg = wxgate_config(tmp_path)
    assert find("Deployment")["spec"]["replicas"] > 1
    assert cfg.log_hash_key is not None  # unset, each pod would hash users under a random key of its own
    assert cfg.log_hash_key.reveal() == filled_secrets()["log-hash-key"]
