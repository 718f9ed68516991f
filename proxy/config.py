"""``proxy.yaml``: schema, loading and validation.

Owns every configuration key. Validation happens once at start (and by ``wxgate check``); an error names the key
path (``routes[0].token``) and says what is expected. Unknown keys are errors. Secrets are never inline: a secret
key takes an ``${ENV_VAR}`` reference (``${ENV_VAR:-default}`` allowed for demos) or a ``<key>_file`` path.
Environment access goes through an injected mapping so tests never touch ``os.environ``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

SECRET_KEYS = frozenset(
    {
        "token",
        "previous_token",
        "encoding_aes_key",
        "previous_encoding_aes_key",
        "api_key",
        "previous_api_key",
        "apiv3_key",
        "previous_apiv3_key",
        "secret",
        "previous_secret",
    }
)
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(Exception):
    """The configuration is invalid; ``str()`` lists every problem with its key path."""


class Secret:
    """A secret value that never shows itself in repr, str, logs or ``wxgate check`` output."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("secret", len(self._value)))


def parse_duration(v: object) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a duration such as 300s, 4.5s, 10m or 25h")
    if isinstance(v, int | float):
        if v < 0:
            raise ValueError("must not be negative")
        return float(v)
    if isinstance(v, str) and (m := _DURATION.match(v)):
        return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    raise ValueError(f"expected a duration such as 300s, 4.5s, 10m or 25h, got {v!r}")


def parse_size(v: object) -> int:
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    if isinstance(v, str) and (m := _SIZE.match(v)):
        unit = (m.group(2) or "b").lower()[0]
        return int(m.group(1)) * {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]
    raise ValueError(f"expected a size such as 64k or 1m, got {v!r}")


def _to_secret(v: object) -> Secret:
    if isinstance(v, Secret):
        return v
    if isinstance(v, str):
        return Secret(v)
    raise ValueError("expected a secret reference")


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
SecretStr = Annotated[Secret, BeforeValidator(_to_secret), PlainSerializer(lambda s: "***", return_type=str)]


def _parse_hostport(v: str, what: str) -> tuple[str, int]:
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port for {what}, e.g. 127.0.0.1:8080, got {v!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - explicit listen-all default


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class DedupConfig(_Strict):
    enabled: bool = True
    ttl: Duration | None = None  # default per protocol: covers the sender's retry horizon
    lease: Duration = 30.0  # how long a claim holder may take before another delivery takes over
    store_down: Literal["fail_open", "fail_closed"] = "fail_open"
    fields: list[str] | None = None  # override the protocol's key recipe with these message fields


class OutboxConfig(_Strict):
    max_attempts: int = Field(15, ge=1, le=1000)
    max_age: Duration = 86400.0
    backoff_base: Duration = 1.0
    backoff_max: Duration = 600.0


class PublicKeyRef(_Strict):
    id: str = Field(pattern=r"^PUB_KEY_ID_[0-9A-Za-z_]+$")
    file: Path


class RouteBase(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    path: str = Field(pattern=r"^/\S*$")
    methods: list[Literal["GET", "POST", "PUT", "PATCH", "DELETE"]] | None = None
    upstream: str | None = None
    deadline: Duration = 4.5  # answer the sender by then, whatever the backend does
    backend_timeout: Duration = 30.0  # how long the backend call may go on after an early answer
    on_backend_failure: Literal["ack", "relay", "fail"] | None = None
    timestamp_window: Duration = 300.0
    max_body: Size = 256 * 1024
    allow_cidrs: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None
    dedup: DedupConfig = DedupConfig()
    outbox: OutboxConfig = OutboxConfig()

    @field_validator("upstream")
    @classmethod
    def _upstream_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
            raise ValueError(f"expected an http(s) URL such as http://127.0.0.1:9000, got {v!r}")
        return v

    @model_validator(mode="after")
    def _relay_needs_dedup(self) -> RouteBase:
        if self.on_backend_failure == "relay" and not self.dedup.enabled:
            raise ValueError("on_backend_failure: relay needs dedup (retries replay the first attempt's reply)")
        return self

    @field_validator("deadline")
    @classmethod
    def _deadline_bound(cls, v: float) -> float:
        if not 0.1 <= v <= 60:
            raise ValueError("deadline must be between 0.1s and 60s (WeChat waits 5s)")
        return v


class WechatMpRoute(RouteBase):
    protocol: Literal["wechat-mp"]
    token: SecretStr
    previous_token: SecretStr | None = None
    app_id: str | None = Field(None, pattern=r"^wx[0-9a-f]{16}$")
    encoding_aes_key: SecretStr | None = None
    previous_encoding_aes_key: SecretStr | None = None
    decrypt_for_backend: bool = False
    require_encryption: bool | None = None  # default: true when encoding_aes_key is set

    @model_validator(mode="after")
    def _aes_needs_app_id(self) -> WechatMpRoute:
        if self.encoding_aes_key is not None and self.app_id is None:
            raise ValueError(
                "encoding_aes_key needs app_id (the AppID is checked inside every encrypted message)"
            )
        if (self.decrypt_for_backend or self.require_encryption) and self.encoding_aes_key is None:
            raise ValueError("decrypt_for_backend / require_encryption need encoding_aes_key")
        return self


class WecomRoute(RouteBase):
    protocol: Literal["wecom"]
    token: SecretStr
    previous_token: SecretStr | None = None
    encoding_aes_key: SecretStr
    previous_encoding_aes_key: SecretStr | None = None
    receive_id: str = Field(description="corpid (in-house app), suiteid, or '' for robots and personal apps")
    decrypt_for_backend: bool = False


class WechatPayV2Route(RouteBase):
    protocol: Literal["wechat-pay-v2"]
    api_key: SecretStr
    previous_api_key: SecretStr | None = None
    mch_id: str = Field(pattern=r"^\d{6,16}$")
    app_id: str | None = None
    decrypt_for_backend: bool = False  # refunds: forward the decrypted req_info


class WechatPayV3Route(RouteBase):
    protocol: Literal["wechat-pay-v3"]
    apiv3_key: SecretStr
    previous_apiv3_key: SecretStr | None = None
    mch_id: str = Field(pattern=r"^\d{6,16}$")
    app_id: str | None = None
    platform_certificates: list[Path] = []
    public_keys: list[PublicKeyRef] = []
    decrypt_for_backend: bool = False
    api_key: SecretStr | None = None  # APIv2 key: v2 XML notices that reach this route (console refunds)

    @model_validator(mode="after")
    def _needs_a_key(self) -> WechatPayV3Route:
        if not self.platform_certificates and not self.public_keys:
            raise ValueError("needs platform_certificates or public_keys to verify Wechatpay-Signature")
        return self


class HmacRoute(RouteBase):
    protocol: Literal["hmac"]
    secret: SecretStr
    previous_secret: SecretStr | None = None
    sign_param: str = "sign"
    sign_header: str | None = None  # take the signature from this header instead of a parameter
    timestamp_param: str = "timestamp"
    nonce_param: str = "nonce"


class StandardWebhooksRoute(RouteBase):
    protocol: Literal["standard-webhooks"]
    secret: SecretStr
    previous_secret: SecretStr | None = None


Route = Annotated[
    WechatMpRoute | WecomRoute | WechatPayV2Route | WechatPayV3Route | HmacRoute | StandardWebhooksRoute,
    Field(discriminator="protocol"),
]

_PAY = ("wechat-pay-v2", "wechat-pay-v3")


def default_policy(route: RouteBase) -> str:
    """MP/WeCom acknowledge at the deadline (users must never see an error); Pay lets WeChat Pay retry."""
    if route.on_backend_failure is not None:
        return route.on_backend_failure
    return "fail" if getattr(route, "protocol", "") in _PAY else "ack"


def default_dedup_ttl(route: RouteBase) -> float:
    if route.dedup.ttl is not None:
        return route.dedup.ttl
    return 25 * 3600.0 if getattr(route, "protocol", "") in _PAY else 600.0


class Config(_Strict):
    listen: str = "0.0.0.0:8080"
    admin: str = "127.0.0.1:9090"
    upstream: str = "http://127.0.0.1:9000"
    store: str = "sqlite:///var/lib/wxgate/state.db"
    unmatched: Literal["passthrough", "deny"] = "passthrough"
    body_size_limit: Size = 1024 * 1024
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    upstream_connect_timeout: Duration = 1.0
    upstream_pool_size: int = Field(100, ge=1, le=10000)
    drain_timeout: Duration = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    routes: list[Route] = []

    @field_validator("listen", "admin")
    @classmethod
    def _hostport(cls, v: str) -> str:
        _parse_hostport(v, "listen/admin")
        return v

    @field_validator("upstream")
    @classmethod
    def _upstream_url(cls, v: str) -> str:
        return RouteBase._upstream_url(v) or v

    @field_validator("store")
    @classmethod
    def _store_url(cls, v: str) -> str:
        schemes = ("sqlite://", "redis://", "rediss://", "redis+cluster://", "redis+sentinel://")
        if not v.startswith(schemes):
            raise ValueError(f"expected one of {', '.join(s + '…' for s in schemes)}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _unique_routes(self) -> Config:
        seen_names: set[str] = set()
        seen_paths: set[str] = set()
        for r in self.routes:
            if r.name in seen_names:
                raise ValueError(
                    f"route name {r.name!r} is used twice; names label metrics and must be unique"
                )
            if r.path in seen_paths:
                raise ValueError(f"path {r.path!r} is routed twice; each callback URL belongs to one route")
            seen_names.add(r.name)
            seen_paths.add(r.path)
        return self

    @property
    def listen_addr(self) -> tuple[str, int]:
        return _parse_hostport(self.listen, "listen")

    @property
    def admin_addr(self) -> tuple[str, int]:
        return _parse_hostport(self.admin, "admin")

    def upstream_for(self, route: RouteBase) -> str:
        return (route.upstream or self.upstream).rstrip("/")


# -- loading ---------------------------------------------------------------------------------------------------


def _fmt_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif (i > 0 and loc[i - 1] == "routes") or part in _ROUTE_TAGS:
            # pydantic puts the discriminator value into the path; users never wrote it
            continue
        else:
            out += f".{part}" if out else part
    return out


_ROUTE_TAGS = {"wechat-mp", "wecom", "wechat-pay-v2", "wechat-pay-v3", "hmac", "standard-webhooks"}


def _interpolate(value: str, environ: Mapping[str, str], where: str, problems: list[str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
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
            out[key] = _interpolate(value.strip(), environ, where, problems)
        elif isinstance(key, str) and key.endswith("_file") and key[:-5] in SECRET_KEYS:
            target = key[:-5]
            if target in node:
                problems.append(f"{where}: give either {target} or {key}, not both")
                continue
            file = Path(_interpolate(str(value), environ, where, problems))
            file = file if file.is_absolute() else base_dir / file
            try:
                out[target] = file.read_text(encoding="utf-8").strip()
            except OSError as e:
                problems.append(f"{where}: cannot read secret file {file} ({e.strerror})")
        else:
            out[key] = _resolve(value, environ, where, problems, base_dir)
    return out


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
    return config.model_dump(mode="json", exclude_none=True)
