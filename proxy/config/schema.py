"""``proxy.yaml``'s schema: every key, its type, default, validation and documentation.

Validation happens once at start (and by ``wxgate check``); an error names the key path (``routes[0].token``)
and says what is expected. Unknown keys are errors. Reading the file, ``${ENV}`` interpolation and secret files
are :mod:`proxy.config.loading`'s; this module does no I/O of its own except reading, once, the TLS files a listener names
(:mod:`proxy.config.certificates`).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from proxy.config.certificates import CertifiedKey, read_chain, read_key
from proxy.stores.url import MEMORY, parse_redis_url, scheme_of, sqlite_path

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
        "log_hash_key",
    }
)
# Keys whose values are file paths: relative paths are read relative to the configuration file.
PATH_KEYS = frozenset({"platform_certificates", "file", "cert_file", "key_file", "authorizers_file"})
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


_TEMPLATE_SEGMENT = re.compile(r"\{([a-z][a-z0-9_]{0,31})\}")
MAX_PATH_PARAMS = 2


def template_params(path: str) -> tuple[str, ...]:
    """The names a route path's template segments capture (``/open/{appid}/callback`` -> ``("appid",)``).

    ValueError when a brace stands anywhere but around a whole segment (``/x{appid}``), a name repeats, there are
    more than :data:`MAX_PATH_PARAMS`, or no segment is literal (such a template would claim every path of its
    length)."""
    segments = path.split("?", 1)[0].split("/")[1:]
    names: list[str] = []
    for seg in segments:
        if "{" not in seg and "}" not in seg:
            continue
        if (m := _TEMPLATE_SEGMENT.fullmatch(seg)) is None:
            raise ValueError(
                f"path: {seg!r} is not a template segment; a {{name}} (lowercase) must be a whole segment, "
                "as in /open/{appid}/callback"
            )
        if m.group(1) in names:
            raise ValueError(f"path: {{{m.group(1)}}} is used twice")
        names.append(m.group(1))
    if len(names) > MAX_PATH_PARAMS:
        raise ValueError(f"path: at most {MAX_PATH_PARAMS} template segments")
    if names and all(_TEMPLATE_SEGMENT.fullmatch(seg) or not seg for seg in segments):
        raise ValueError("path: a template needs a fixed segment too (/open/{appid}/callback, not /{appid})")
    return tuple(names)


def path_shape(path: str) -> str:
    """``path`` with every template segment written ``{}``: two routes of one shape would claim the same paths."""
    return _TEMPLATE_SEGMENT.sub("{}", path)


# The placeholders deploy/kubernetes/secret.yaml ships; a secret still holding one was never filled in.
PLACEHOLDER_PREFIX = "replace-with-"


def secret_problem(value: str) -> str | None:
    """Why ``value`` cannot be a secret (empty, whitespace, a shipped placeholder), never quoting it."""
    if not value.strip():
        # A signature keyed with an empty secret is one anybody can compute.
        return "is empty; set the secret (an empty key would let anyone sign)"
    if value.strip().startswith(PLACEHOLDER_PREFIX):
        return (
            f"still holds a placeholder ({PLACEHOLDER_PREFIX}…, as shipped in deploy/kubernetes/secret.yaml); "
            "set the real secret"
        )
    return None


def _to_secret(v: object) -> Secret:
    if isinstance(v, Secret):
        v = v.reveal()
    if isinstance(v, str):
        if (problem := secret_problem(v)) is not None:
            raise ValueError(problem)
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


Policy = Literal["ack", "relay", "fail"]
"""What wxgate answers when the backend fails or is late (``on_backend_failure``)."""


class _Strict(BaseModel):
    # The docstring under each field is its description: docs/configuration.md is generated from them.
    model_config = ConfigDict(
        extra="forbid", frozen=True, arbitrary_types_allowed=True, use_attribute_docstrings=True
    )


class DedupConfig(_Strict):
    enabled: bool = True
    """Deduplicate this route's notifications: the backend sees each once, retries get its reply."""
    ttl: Duration | None = None
    """How long a delivered notification's reply is kept for replays; must outlast the sender's retries and
    be at least twice the route's `timestamp_window`. Default: 10m (25h for WeChat Pay), raised to twice
    `timestamp_window` when that is longer.
    """
    lease: Duration = 30.0
    """How long a claim holder may take before another delivery of the same notification takes over; never less
    than the route's deadline + backend_timeout + 5 s (the longest a claimed delivery can take, a wait for a
    backend slot included)."""
    store_down: Literal["fail_open", "fail_closed"] = "fail_open"
    """Store unreachable: `fail_open` forwards anyway (counted as `store_error`), `fail_closed` answers so
    the sender retries.
    """
    fields: list[str] | None = None
    """Build the dedup key from these message fields instead of the protocol's recipe: only when every one is
    present and non-empty, else from the digest of the whole message (a key of the fields that are there would
    merge distinct notifications).
    """


class RejectionBudgetConfig(_Strict):
    failures: int = Field(20, ge=1, le=1_000_000)
    """Verification failures a source may have within `per` before it is blocked."""
    per: Duration = Field(60.0, gt=0)
    """The window the failures are counted in (it starts at a source's first failure)."""
    block: Duration = Field(300.0, gt=0)
    """How long a blocked source is answered 429 without any verification work."""
    sources: int = Field(10000, ge=1, le=10_000_000)
    """Sources remembered (least recently seen forgotten first), for failing and for passing sources each:
    bounds the memory an attacker with many addresses can take.
    """


class OutboxConfig(_Strict):
    max_attempts: int | None = Field(None, ge=1)
    """Redeliveries of an acknowledged notification before it becomes a dead letter. Default: no limit but
    `max_age`, so a backend outage of any length up to `max_age` loses nothing.
    """
    max_age: Duration = 86400.0
    """Age after which an undelivered notification becomes a dead letter (redeliveries go on until then)."""
    backoff_base: Duration = 1.0
    """Delay before the first redelivery; doubles with each attempt (full jitter)."""
    backoff_max: Duration = 600.0
    """Longest delay between two redeliveries."""


class PublicKeyRef(_Strict):
    id: str = Field(pattern=r"^PUB_KEY_ID_[0-9A-Za-z_]+$")
    """The key id WeChat Pay sends in `Wechatpay-Serial` (`PUB_KEY_ID_…`)."""
    file: Path
    """PEM file of that WeChat Pay public key."""


class ListenerTls(_Strict):
    cert_file: Path
    """PEM certificate chain shown to senders: the server certificate first, then its intermediates."""
    key_file: Path
    """PEM private key of that certificate, unencrypted (mount it like a secret)."""
    min_version: Literal["1.2", "1.3"] = "1.2"
    """Oldest TLS version accepted."""
    plain_http: Literal["refuse", "allow"] = "refuse"
    """Plain HTTP on the TLS port: `refuse` answers 400 and closes the connection, `allow` serves both."""

    _certified: CertifiedKey | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _read_files(self) -> ListenerTls:
        # Each file is read once, here; the TLS context is built from what was read (proxy.tls), never re-read.
        chain, key, problems = None, None, []
        try:
            chain = read_chain(self.cert_file)
        except ValueError as e:
            problems.append(_problem("cert_file", self.cert_file, e))
        try:
            key = read_key(self.key_file)
        except ValueError as e:
            problems.append(_problem("key_file", self.key_file, e))
        if problems or chain is None or key is None:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        self._certified = CertifiedKey(self.cert_file, self.key_file, chain, key)  # checks the pair
        return self

    @property
    def certified_key(self) -> CertifiedKey:
        """The certificate chain and key as read (and checked) when this configuration was validated."""
        assert self._certified is not None, "a validated ListenerTls has read its files"
        return self._certified


def _problem(key: str, value: object, error: ValueError) -> InitErrorDetails:
    """A validation error at ``key`` (a model validator's own errors have no key of their own)."""
    return InitErrorDetails(
        type=PydanticCustomError("value_error", "{message}", {"message": str(error)}), loc=(key,), input=value
    )


class RouteBase(_Strict):
    # The template segments (``{appid}``) this protocol's ``path`` may hold; see :func:`template_params`.
    path_params: ClassVar[frozenset[str]] = frozenset()
    # Whether the sender signs a timestamp, so that nonces are remembered for twice ``timestamp_window`` and a
    # dedup record must live at least that long (WeChat Pay v2 notices carry none).
    signed_timestamp: ClassVar[bool] = True

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    """The route's label in metrics, spans and logs: lowercase, unique."""
    path: str = Field(pattern=r"^/\S*$")
    """The exact callback path set in the sender's console (the query string is not matched). Only
    `wechat-open-platform` message routes hold a template segment, `{appid}` where the console URL has `$APPID$`
    (`/open/{appid}/callback`): it matches one path segment that is an appid.
    """
    methods: list[Literal["GET", "POST", "PUT", "PATCH", "DELETE"]] | None = None
    """HTTP methods accepted (405 otherwise). Default: GET and POST where the protocol has URL
    verification, else POST.
    """
    upstream: str | None = None
    """This route's backend, instead of the top-level `upstream`."""
    deadline: Duration = 4.5
    """Answer the sender by then, whatever the backend does (WeChat waits 5 s). 0.1s to 60s."""
    backend_timeout: Duration = 30.0
    """How long the backend call may go on after an early answer; its result still settles dedup and the
    outbox.
    """
    on_backend_failure: Policy | None = None
    """A slow or failing backend: `ack` answers success and keeps the notification in the outbox, `relay`
    lets the sender retry and replays the backend's real reply (success on the last expected attempt),
    `fail` passes the failure on. Default: `fail` for WeChat Pay, `ack` otherwise.
    """
    timestamp_window: Duration = 300.0
    """Refuse requests signed further than this from now, either way; also how long nonces are remembered
    (twice this). At least 1s.
    """
    max_body: Size = 256 * 1024
    """Largest request body accepted on this route (413 above)."""
    allow_cidrs: list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None = None
    """Only these source networks may call this route (403 otherwise); see `trusted_proxies` behind a load
    balancer.
    """
    dedup: DedupConfig = DedupConfig()
    """Deduplication of sender retries."""
    outbox: OutboxConfig = OutboxConfig()
    """Redelivery of acknowledged notifications the backend has not taken yet."""
    backend_concurrency: int | None = Field(None, ge=1, le=100000)
    """At most this many calls in flight to this route's backend (sender requests and outbox redeliveries
    together). A request over it waits while its deadline leaves time to answer, then follows
    `on_backend_failure` (`ack`: kept in the outbox, which drains at the backend's pace). Routes with the same
    backend URL share one limit, the smallest they set. Default: the top-level `backend_concurrency` for a route
    without an `upstream` of its own, else no limit.
    """

    @field_validator("upstream")
    @classmethod
    def _upstream_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
            raise ValueError(f"expected an http(s) URL such as http://127.0.0.1:9000, got {v!r}")
        return v

    @model_validator(mode="after")
    def _declared_params(self) -> RouteBase:
        undeclared = [n for n in template_params(self.path) if n not in self.path_params]
        if undeclared:
            raise ValueError(
                f"path: {{{undeclared[0]}}} is a template segment, which protocol "
                f"{getattr(self, 'protocol', '?')} does not take (only wechat-open-platform message routes "
                "have one: {appid})"
            )
        return self

    @model_validator(mode="after")
    def _relay_needs_dedup(self) -> RouteBase:
        if self.on_backend_failure == "relay" and not self.dedup.enabled:
            raise ValueError(
                "on_backend_failure: relay needs dedup (retries replay the first attempt's reply)"
            )
        return self

    @field_validator("timestamp_window")
    @classmethod
    def _window_bound(cls, v: float) -> float:
        if v < 1:
            # 0 would refuse every signed request, or (where 0 meant "off") switch the replay cache off
            raise ValueError("timestamp_window must be at least 1s (300s is what WeChat's senders expect)")
        return v

    @model_validator(mode="after")
    def _ttl_outlasts_replay_cache(self) -> RouteBase:
        # Nonces are remembered for twice the window; a dedup record that expires sooner lets an exact replay
        # (fresh timestamp, already seen) through to the backend again.
        ttl = self.dedup.ttl
        if (
            self.dedup.enabled
            and ttl is not None
            and self.signed_timestamp
            and ttl < 2 * self.timestamp_window
        ):
            raise ValueError(
                f"dedup.ttl ({ttl:g}s) must be at least twice timestamp_window ({2 * self.timestamp_window:g}s): "
                "replays are recognised that long, and a shorter ttl would forward them again"
            )
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
    """The Token set in the Official Account console."""
    previous_token: SecretStr | None = None
    """The previous Token, still accepted while rotating."""
    app_id: str | None = Field(None, pattern=r"^wx[0-9a-f]{16}$")
    """The AppID (`wx` and 16 hex digits), checked inside every encrypted message."""
    encoding_aes_key: SecretStr | None = None
    """EncodingAESKey (43 characters) for compatible or safe mode; needs `app_id`."""
    previous_encoding_aes_key: SecretStr | None = None
    """The previous EncodingAESKey, still accepted while rotating."""
    decrypt_for_backend: bool = False
    """Forward decrypted plaintext XML to a plaintext backend and encrypt its passive reply."""
    require_encryption: bool | None = None
    """Refuse unencrypted messages (safe mode). Default: true when `encoding_aes_key` is set."""

    @model_validator(mode="after")
    def _aes_needs_app_id(self) -> WechatMpRoute:
        _check_account_keys(self)
        return self


def _check_account_keys(route: WechatMpRoute | WechatMiniProgramRoute) -> None:
    """An account's AES settings hang together: the key needs the AppID it is checked against, and decrypting or
    requiring encryption needs the key."""
    if route.encoding_aes_key is not None and route.app_id is None:
        raise ValueError(
            "encoding_aes_key needs app_id (the AppID is checked inside every encrypted message)"
        )
    if (route.decrypt_for_backend or route.require_encryption) and route.encoding_aes_key is None:
        raise ValueError("decrypt_for_backend / require_encryption need encoding_aes_key")


class WechatMiniProgramRoute(RouteBase):
    protocol: Literal["wechat-miniprogram"]
    token: SecretStr
    """The Token set in the Mini Program console (开发管理 › 消息推送配置), or the Channels shop's."""
    previous_token: SecretStr | None = None
    """The previous Token, still accepted while rotating."""
    app_id: str | None = Field(None, pattern=r"^wx[0-9a-f]{16}$")
    """The Mini Program's (or the Channels shop's) AppID, checked inside every encrypted message."""
    encoding_aes_key: SecretStr | None = None
    """EncodingAESKey (43 characters) for compatible or safe mode; needs `app_id`."""
    previous_encoding_aes_key: SecretStr | None = None
    """The previous EncodingAESKey, still accepted while rotating."""
    format: Literal["json", "xml"] = "json"
    """数据格式 as chosen in the console: how every body and decrypted message is read (a body in the other
    format is refused, 400 `format_mismatch`), and the format of encrypted replies.
    """
    channels: bool = False
    """A Channels shop (视频号小店) push URL: safe mode and JSON only, as WeChat allows; needs `encoding_aes_key`
    and `app_id`, and refuses plaintext pushes.
    """
    decrypt_for_backend: bool = False
    """Forward the decrypted JSON or XML to a plaintext backend and encrypt its passive reply."""
    require_encryption: bool | None = None
    """Refuse unencrypted messages (safe mode). Default: true when `encoding_aes_key` is set (always for
    `channels`).
    """

    @model_validator(mode="after")
    def _keys_and_format(self) -> WechatMiniProgramRoute:
        _check_account_keys(self)
        if self.channels and self.format != "json":
            raise ValueError("a Channels shop pushes JSON only (视频号小店 只允许为JSON): set format: json")
        if self.channels and self.encoding_aes_key is None:
            raise ValueError("a Channels shop pushes in safe mode only: set encoding_aes_key and app_id")
        return self


class WecomRoute(RouteBase):
    protocol: Literal["wecom"]
    token: SecretStr
    """The Token set in the WeCom admin console."""
    previous_token: SecretStr | None = None
    """The previous Token, still accepted while rotating."""
    encoding_aes_key: SecretStr
    """EncodingAESKey (43 characters) from the WeCom admin console."""
    previous_encoding_aes_key: SecretStr | None = None
    """The previous EncodingAESKey, still accepted while rotating."""
    receive_id: str = Field(description="corpid (in-house app), suiteid, or '' for robots and personal apps")
    decrypt_for_backend: bool = False
    """Forward decrypted plaintext XML to the backend and encrypt its passive reply."""


class WechatPayV2Route(RouteBase):
    signed_timestamp: ClassVar[bool] = False

    protocol: Literal["wechat-pay-v2"]
    api_key: SecretStr
    """The APIv2 key (32 characters) set on the merchant platform."""
    previous_api_key: SecretStr | None = None
    """The previous APIv2 key, still accepted while rotating."""
    mch_id: str = Field(pattern=r"^\d{6,16}$")
    """The merchant id; notices for another `mch_id` are refused."""
    app_id: str | None = None
    """If set, notices for another `appid` are refused."""
    decrypt_for_backend: bool = False
    """Refund notices: forward `req_info` decrypted."""


class WechatPayV3Route(RouteBase):
    protocol: Literal["wechat-pay-v3"]
    apiv3_key: SecretStr
    """The APIv3 key (32 bytes) that decrypts `resource`."""
    previous_apiv3_key: SecretStr | None = None
    """The previous APIv3 key, still accepted while rotating."""
    mch_id: str = Field(pattern=r"^\d{6,16}$")
    """The merchant id; notices for another `mchid` are refused."""
    app_id: str | None = None
    """If set, notices for another `appid` are refused."""
    platform_certificates: list[Path] = []
    """PEM platform certificates that verify `Wechatpay-Signature`, chosen by `Wechatpay-Serial`."""
    public_keys: list[PublicKeyRef] = []
    """WeChat Pay public keys (the newer scheme), chosen by `Wechatpay-Serial`."""
    decrypt_for_backend: bool = False
    """Forward the notice with `resource` replaced by its decrypted JSON."""
    api_key: SecretStr | None = None
    """APIv2 key for v2 XML notices that reach this route (refunds started in the merchant console)."""
    previous_api_key: SecretStr | None = None
    """The previous APIv2 key, still accepted while rotating."""

    @model_validator(mode="after")
    def _needs_a_key(self) -> WechatPayV3Route:
        if not self.platform_certificates and not self.public_keys:
            raise ValueError("needs platform_certificates or public_keys to verify Wechatpay-Signature")
        return self


class HmacRoute(RouteBase):
    protocol: Literal["hmac"]
    secret: SecretStr
    """The shared HMAC-SHA256 secret."""
    previous_secret: SecretStr | None = None
    """The previous secret, still accepted while rotating."""
    sign_param: str = "sign"
    """Parameter that carries the signature."""
    sign_header: str | None = None
    """Header that carries the signature instead of `sign_param`."""
    timestamp_param: str = "timestamp"
    """Parameter with the Unix timestamp (seconds)."""
    nonce_param: str = "nonce"
    """Parameter with the nonce."""


class StandardWebhooksRoute(RouteBase):
    protocol: Literal["standard-webhooks"]
    secret: SecretStr
    """The `whsec_…` signing secret."""
    previous_secret: SecretStr | None = None
    """The previous secret, still accepted while rotating."""


class WechatOpenPlatformRoute(RouteBase):
    path_params: ClassVar[frozenset[str]] = frozenset({"appid"})

    protocol: Literal["wechat-open-platform"]
    kind: Literal["authorization", "messages"]
    """Which of the third-party platform's two URLs this is: `authorization` (授权事件接收URL: tickets and
    authorization changes, answered exactly `success`) or `messages` (消息与事件接收URL, whose path holds
    `{appid}` where the console URL has `$APPID$`).
    """
    component_app_id: str = Field(pattern=r"^wx[0-9a-f]{16}$")
    """The third-party platform's AppID, checked inside every message (whichever account it is for)."""
    token: SecretStr
    """The platform's 消息校验Token."""
    previous_token: SecretStr | None = None
    """The previous Token, still accepted while rotating."""
    encoding_aes_key: SecretStr
    """The platform's 消息加解密Key (43 characters); platforms push in safe mode only."""
    previous_encoding_aes_key: SecretStr | None = None
    """The previous key, still accepted while rotating."""
    authorizers: dict[str, str] | None = None
    """`messages` routes: each authorizer's appid and original id (`wx…: gh_…`). The path's appid is not signed;
    with this map it must be listed and the message addressed to its original id (else 403), and the backend
    gets `X-Wxgate-Authorizer-Verified: true`. Without it any appid passes, marked unverified. The 全网发布 test
    accounts are always accepted.
    """
    authorizers_file: Path | None = None
    """The same map in a YAML or JSON file, re-read on every reload (instead of `authorizers`)."""
    decrypt_for_backend: bool = False
    """Forward the decrypted XML to a plaintext backend and encrypt its passive reply."""

    @model_validator(mode="after")
    def _kind_and_path(self) -> WechatOpenPlatformRoute:
        templated = "appid" in template_params(self.path)
        if self.kind == "messages" and not templated:
            raise ValueError(
                "path: a messages route's path holds {appid} where the console URL has $APPID$ "
                "(/open/{appid}/callback)"
            )
        if self.kind == "authorization" and templated:
            raise ValueError("path: the authorization URL has no $APPID$; remove {appid}")
        if self.authorizers is not None and self.authorizers_file is not None:
            raise ValueError("give either authorizers or authorizers_file, not both")
        if self.kind == "authorization" and (self.authorizers, self.authorizers_file) != (None, None):
            raise ValueError("authorizers bind the {appid} of a messages route; remove them here")
        return self


Route = Annotated[
    WechatMpRoute
    | WecomRoute
    | WechatPayV2Route
    | WechatPayV3Route
    | HmacRoute
    | StandardWebhooksRoute
    | WechatMiniProgramRoute
    | WechatOpenPlatformRoute,
    Field(discriminator="protocol"),
]

ROUTE_TYPES: tuple[type[RouteBase], ...] = get_args(get_args(Route)[0])
"""Every route schema class, in the order of :data:`Route`."""
ROUTE_TAGS = frozenset(get_args(t.model_fields["protocol"].annotation)[0] for t in ROUTE_TYPES)
"""The ``protocol`` values a route may have (the discriminator of :data:`Route`)."""


RESTART_KEYS = (
    "listen",
    "admin",
    "store",
    "upstream",
    "upstream_pool_size",
    "upstream_connect_timeout",
    "workers",
)
"""The top-level keys a reload cannot apply (sockets, the store connection, the backend pool); every other key is
live: SIGHUP or ``POST /-/reload`` applies it without dropping a connection."""


class Config(_Strict):
    listen: str = "0.0.0.0:8080"
    """Where callbacks arrive (`host:port`; `0.0.0.0:8080` in a container)."""
    admin: str = "127.0.0.1:9090"
    """The admin server: `/metrics`, `/healthz`, `/readyz`. Keep it off the public network."""
    upstream: str = "http://127.0.0.1:9000"
    """The legacy backend's base URL; unmatched paths pass through to it."""
    store: str = "sqlite:///var/lib/wxgate/state.db"
    """Dedup records, replay cache and outbox: `sqlite:///path` (one replica), `sqlite://:memory:`,
    `redis://` or `rediss://host:port/db`, `redis+cluster://h1:p1,h2:p2`,
    `redis+sentinel://h1:p1,h2:p2/service` (shared by replicas).
    """
    unmatched: Literal["passthrough", "deny"] = "passthrough"
    """Paths no route matches: `passthrough` (proxied to `upstream` as they are) or `deny` (404). Another
    spelling of a route's path (`/WeChat/callback/`, `%2F`, `;x`, `/./`) is refused either way (400)."""
    body_size_limit: Size = 1024 * 1024
    """Hard cap on any request body, enforced while it is read."""
    head_timeout: Duration = Field(10.0, gt=0)
    """How long a request head (request line and headers) may take to arrive once it has started; a slower
    one is answered 408 and its connection closed (heads over 64 KiB: 431, as soon as they are)."""
    body_timeout: Duration = Field(30.0, gt=0)
    """How long a request body may take to arrive once its first part has; a slower one is answered 408 and its
    connection closed."""
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    """CIDRs of proxies in front of wxgate whose `X-Forwarded-For` is believed (for `allow_cidrs`) and appended
    to; from any other peer it is replaced by the peer's address, and `Forwarded`/`X-Real-IP` are dropped."""
    backend_concurrency: int | None = Field(None, ge=1, le=100000)
    """At most this many calls in flight to `upstream`, for every route without an `upstream` of its own (a
    route's `backend_concurrency` sets its own); see the route key. With `workers: N` each worker holds
    1/N of it (at least 1). Default: no limit.
    """
    rejection_budget: RejectionBudgetConfig | None = None
    """Answer a source (client address, `trusted_proxies`-aware; an IPv6 /64) that keeps failing verification
    with 429 and no verification work, e.g. `{failures: 20, per: 60s, block: 300s}`. A source that has passed
    verification is never blocked, and a reload unblocks every source. Counted per worker. Default: off.
    """
    upstream_connect_timeout: Duration = 1.0
    """How long connecting to the backend may take."""
    upstream_pool_size: int = Field(100, ge=1, le=10000)
    """Keep-alive connections kept open to the backend."""
    drain_timeout: Duration = 10.0
    """On SIGTERM: how long in-flight requests and backend calls may take to finish."""
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = 1
    """Processes serving `listen` (each one core): `1`, a number, or `auto` (the CPUs wxgate may use: its CPU
    affinity and cgroup CPU quota, rounded down). Above 1, a supervisor runs them, restarts a crashed one, passes
    on SIGHUP and SIGTERM, and serves `admin` for all (`/metrics` with a `worker` label). Needs a store the
    workers share: Redis or a `sqlite:///` file, not `sqlite://:memory:`."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Level of the JSON log lines on stderr; `info` writes one line per request."""
    log_hash_key: SecretStr | None = None
    """Key of the user hash in log lines (`user`: HMAC-SHA256 of the openid, 16 hex digits), at least 16
    characters, e.g. `openssl rand -hex 32`; the same on every replica so their hashes correlate. Unset: a random
    key per process (hashes then differ across replicas and restarts; a warning says so at start).
    """
    tls: ListenerTls | None = None
    """Terminate TLS on `listen` with this certificate; absent, `listen` speaks plain HTTP."""
    routes: list[Route] = []
    """The callback endpoints, one per URL configured at a sender."""

    @field_validator("log_hash_key")
    @classmethod
    def _long_enough(cls, v: Secret | None) -> Secret | None:
        if v is not None and len(v.reveal().strip()) < 16:
            raise ValueError("must be at least 16 characters (e.g. openssl rand -hex 32)")
        return v

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
        # Only the scheme is ever echoed: the rest of a store URL may hold the Redis password.
        if scheme_of(v) == "sqlite":
            sqlite_path(v)
        elif re.search(r"://[^/@]*:@", v):
            raise ValueError("the URL's password is empty (redis://:PASSWORD@host:6379/0, or no ':@' at all)")
        else:
            parse_redis_url(v)  # what the store will connect to; its errors never quote the URL
        if ":" + PLACEHOLDER_PREFIX in v:
            raise ValueError(
                f"the URL's password still holds a placeholder ({PLACEHOLDER_PREFIX}…, as shipped in "
                "deploy/kubernetes/secret.yaml); set the real password"
            )
        return v

    @model_validator(mode="after")
    def _distinct_ports(self) -> Config:
        (lhost, lport), (ahost, aport) = self.listen_addr, self.admin_addr
        wildcard = {"0.0.0.0", "::"}  # noqa: S104 - comparing, not binding
        if lport == aport != 0 and (lhost == ahost or lhost in wildcard or ahost in wildcard):
            raise ValueError(f"listen and admin both bind port {lport}; give admin its own port")
        return self

    @model_validator(mode="after")
    def _shared_store(self) -> Config:
        if self.workers != 1 and self.store == MEMORY:
            raise ValueError(
                f"workers: {self.workers} with store sqlite://:memory: gives each worker its own memory, so a "
                "retry reaching another worker is not recognised as a duplicate; use a sqlite:///path file or "
                "redis://, or workers: 1"
            )
        return self

    @model_validator(mode="after")
    def _unique_routes(self) -> Config:
        seen_names: set[str] = set()
        seen_paths: set[str] = set()
        for r in self.routes:
            if r.name in seen_names:
                raise ValueError(
                    f"route name {r.name!r} is used twice; names label metrics and must be unique"
                )
            if path_shape(r.path) in seen_paths:
                raise ValueError(f"path {r.path!r} is routed twice; each callback URL belongs to one route")
            seen_names.add(r.name)
            seen_paths.add(path_shape(r.path))
        return self

    @property
    def listen_addr(self) -> tuple[str, int]:
        return _parse_hostport(self.listen, "listen")

    @property
    def admin_addr(self) -> tuple[str, int]:
        return _parse_hostport(self.admin, "admin")

    def upstream_for(self, route: RouteBase) -> str:
        return (route.upstream or self.upstream).rstrip("/")
