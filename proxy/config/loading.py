"""Reading ``proxy.yaml``: YAML, ``${ENV}`` interpolation, secret references and files, relative paths, and
validation errors that name the key path. Environment access goes through an injected mapping so tests never
touch ``os.environ``. Secrets are never inline: a secret key takes an ``${ENV_VAR}`` reference
(``${ENV_VAR:-default}`` allowed for demos) or a ``<key>_file`` path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from proxy.config.schema import PATH_KEYS, ROUTE_TAGS, SECRET_KEYS, Config, ConfigError, secret_problem

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _fmt_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif (i > 0 and loc[i - 1] == "routes") or part in ROUTE_TAGS:
            # pydantic puts the discriminator value into the path; users never wrote it
            continue
        else:
            out += f".{part}" if out else part
    return out


def _interpolate(value: str, environ: Mapping[str, str], where: str, problems: list[str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if default is not None:
            # As in sh and Compose: ${VAR:-default} takes the default when VAR is unset *or empty*.
            return environ.get(name) or default
        if name in environ:
            return environ[name]
        problems.append(f"{where}: environment variable {name} is not set")
        return ""

    return _ENV_REF.sub(sub, value)


def _resolve(node: Any, environ: Mapping[str, str], path: str, problems: list[str], base_dir: Path) -> Any:
    """Interpolate ``${ENV}`` everywhere, enforce secret references, and read ``<secret>_file`` keys."""
    if isinstance(node, list):
        return [_resolve(v, environ, f"{path}[{i}]", problems, base_dir) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return _interpolate(node, environ, path, problems) if isinstance(node, str) else node
    out: dict[str, Any] = {}
    for key, value in node.items():
        where = f"{path}.{key}" if path else str(key)
        if key in SECRET_KEYS:
            if not isinstance(value, str) or not _ENV_REF.fullmatch(value.strip()):
                problems.append(
                    f"{where}: secrets are never written inline; use ${{ENV_VAR}} or {key}_file: /path/to/file"
                )
                continue
            before = len(problems)
            text = _interpolate(value.strip(), environ, where, problems)
            if len(problems) == before:  # an unset variable is already named
                _put_secret(out, key, text, where, problems)
        elif isinstance(key, str) and key.endswith("_file") and key[:-5] in SECRET_KEYS:
            target = key[:-5]
            if target in node:
                problems.append(f"{where}: give either {target} or {key}, not both")
                continue
            file = Path(_interpolate(str(value), environ, where, problems))
            file = file if file.is_absolute() else base_dir / file
            try:
                text = file.read_text(encoding="utf-8").strip()
            except OSError as e:
                problems.append(f"{where}: cannot read secret file {file} ({e.strerror})")
            else:
                _put_secret(out, target, text, f"{where} ({file})", problems)
        elif key in PATH_KEYS:
            out[key] = _paths(_resolve(value, environ, where, problems, base_dir), base_dir)
        else:
            out[key] = _resolve(value, environ, where, problems, base_dir)
    return out


def _put_secret(out: dict[str, Any], key: str, value: str, where: str, problems: list[str]) -> None:
    """An empty ``previous_*`` is simply absent (``${OLD_TOKEN:-}`` outside a rotation); any other unusable
    secret is a problem naming the key, never the value."""
    if key.startswith("previous_") and not value.strip():
        return
    if (problem := secret_problem(value)) is not None:
        problems.append(f"{where}: {problem}")
        return
    out[key] = value


def _paths(value: Any, base_dir: Path) -> Any:
    if isinstance(value, list):
        return [_paths(v, base_dir) for v in value]
    if isinstance(value, str) and value and not Path(value).is_absolute():
        return str(base_dir / value)
    return value


def load_config(path: str | Path, environ: Mapping[str, str]) -> Config:
    """Read, interpolate and validate ``path``; raise :class:`ConfigError` listing every problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read configuration ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_config(raw if raw is not None else {}, environ, base_dir=path.parent, source=str(path))


def parse_config(
    raw: object, environ: Mapping[str, str], base_dir: Path = Path(), source: str = ""
) -> Config:
    prefix = f"{source}: " if source else ""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}expected a mapping of settings at the top level")
    problems: list[str] = []
    resolved = _resolve(raw, environ, "", problems, base_dir)
    if problems:
        raise ConfigError("\n".join(prefix + p for p in problems))
    try:
        return Config.model_validate(resolved)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = _fmt_loc(tuple(err["loc"]))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see proxy.yaml for every key)"
            lines.append(f"{prefix}{loc or '(top level)'}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def redacted(config: Config) -> dict[str, Any]:
    """The effective configuration with every secret shown as ``***`` (for ``wxgate check``)."""
    out = config.model_dump(mode="json", exclude_none=True)
    # A Redis URL may carry a password (redis://:${REDIS_PASSWORD}@host:6379/0), and in its query string too.
    out["store"] = redact_url(out["store"])
    return out


def redact_url(url: str) -> str:
    """``url`` with everything after the user name in its user info, and any ``password=``, shown as ``***``."""
    scheme, sep, rest = url.partition("://")
    if scheme == "sqlite":
        return url
    userinfo, at, hosts = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}:***@{hosts}" if colon else f"***@{hosts}"
    return scheme + sep + re.sub(r"(?i)(password=)[^&#]*", r"\1***", rest)
