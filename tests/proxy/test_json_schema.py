"""The editor schema (``docs/proxy.schema.json``): current, named by each shipped configuration's modeline, and it
accepts every configuration wxgate ships while flagging what an editor should (a misspelt key, an inline
secret, a bad duration)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from proxy.config import json_schema
from proxy.config.schema import parse_duration, parse_size
from tests.support.procs import ROOT, WXGATE

SCHEMA_FILE = ROOT / "docs/proxy.schema.json"
SHIPPED = [ROOT / "proxy.yaml", ROOT / "deploy/compose/proxy.yaml", ROOT / "deploy/docker/proxy.yaml"]
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def problems(validator: jsonschema.Draft202012Validator, doc: Any) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_the_committed_schema_is_what_wxgate_check_prints() -> None:
    printed = subprocess.run(
        [*WXGATE, "check", "--schema"], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True
    ).stdout
    assert printed == json_schema.render()
    assert SCHEMA_FILE.read_text() == printed, (
        "docs/proxy.schema.json is stale: run `make docs` and commit it"
    )


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_shipped_config_names_the_schema_and_is_valid(
    config: Path, validator: jsonschema.Draft202012Validator
) -> None:
    first = config.read_text().splitlines()[0]
    m = MODELINE.match(first)
    assert m, f"{config}: the first line should be the yaml-language-server modeline"
    assert (config.parent / m.group(1)).resolve() == SCHEMA_FILE
    assert problems(validator, yaml.safe_load(config.read_text())) == []


def test_the_kubernetes_configmap_holds_a_valid_config(validator: jsonschema.Draft202012Validator) -> None:
    configmap = yaml.safe_load((ROOT / "deploy/kubernetes/configmap.yaml").read_text())
    assert problems(validator, yaml.safe_load(configmap["data"]["proxy.yaml"])) == []


MP = {"name": "mp", "path": "/wechat/callback", "protocol": "wechat-mp", "token": "${WECHAT_TOKEN}"}


@pytest.mark.parametrize(
    ("config", "complaint"),
    [
        ({"upstreem": "http://127.0.0.1:9000"}, "'upstreem' was unexpected"),
        ({"routes": [{**MP, "tokne": "${T}"}]}, "routes.0"),
        ({"routes": [{**MP, "dedup": {"ttll": "10m"}}]}, "routes.0"),
        ({"routes": [{**MP, "token": "inline-secret"}]}, "routes.0"),
        ({"routes": [{k: v for k, v in MP.items() if k != "token"}]}, "routes.0"),
        ({"routes": [{**MP, "deadline": "4.5 seconds"}]}, "routes.0"),
        ({"routes": [{**MP, "on_backend_failure": "retry"}]}, "routes.0"),
        ({"unmatched": "drop"}, "unmatched"),
    ],
)
def test_what_an_editor_flags(
    validator: jsonschema.Draft202012Validator, config: Any, complaint: str
) -> None:
    found = problems(validator, config)
    assert found and any(complaint in p for p in found), found


@pytest.mark.parametrize(
    "route",
    [
        {**MP, "token": "${WECHAT_TOKEN:-demo}", "deadline": 4.5, "timestamp_window": "5m"},
        {**{k: v for k, v in MP.items() if k != "token"}, "token_file": "/run/secrets/token"},
        {**MP, "deadline": "${DEADLINE}", "on_backend_failure": "${POLICY}", "path": "${WECHAT_PATH}"},
        {**MP, "dedup": {"ttl": None, "lease": "30s", "store_down": "fail_closed"}},
    ],
)
def test_what_the_loader_accepts_is_valid(validator: jsonschema.Draft202012Validator, route: Any) -> None:
    assert problems(validator, {"routes": [{**route, "max_body": "64k"}], "body_size_limit": "1m"}) == []


FORMS = [
    *(
        (json_schema.DURATION, parse_duration, t)
        for t in ["300s", "4.5s", "10m", "1d", "250ms", " 5 ", "3x", "-1s"]
    ),
    *(
        (json_schema.SIZE, parse_size, t)
        for t in ["64k", "1m", "1M", "2GiB", "10kb", "512", "5 b", "1.5m", "64q"]
    ),
]


@pytest.mark.parametrize(
    ("pattern", "parse", "text"), FORMS, ids=[f"{p.__name__}({t!r})" for _, p, t in FORMS]
)
def test_the_duration_and_size_patterns_agree_with_the_loader(
    pattern: str, parse: Callable[[object], object], text: str
) -> None:
    try:
        parse(text)
        accepted = True
    except ValueError:
        accepted = False
    assert bool(re.fullmatch(pattern, text)) == accepted
