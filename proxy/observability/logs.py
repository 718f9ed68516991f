"""JSON logging: one line per request from its outcome record, and JSON for everything else wxgate logs.

Secrets, tokens, ciphertexts and message contents are never logged: the outcome record holds only closed
labels, numbers, the dedup key's hash, the user's keyed hash (:class:`UserRef`) and, on an Open Platform message
route, the authorizer's appid (``tenant``: an account's public id, not a user's).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sys
import time
from collections.abc import Mapping
from typing import Any

from proxy.config import Secret
from proxy.observability.outcome import Outcome

access = logging.getLogger("wxgate.access")
# Where the sender names its user: Official Account/WeCom messages (FromUserName), Pay v2 notices (openid),
# Pay v3 notices (the decrypted resource's payer.openid).
USER_FIELDS = ("FromUserName", "openid", "payer.openid")


class JsonFormatter(logging.Formatter):
    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})  # on every line: a worker's index under `workers: N`

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self.static:
            line.update(self.static)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["msg"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def setup(level: str = "info", static: Mapping[str, Any] | None = None) -> None:
    # What the formatter never prints, logging need not collect for every record (the logging HOWTO's
    # "Optimization" list): the caller's file and line walk the stack, the rest read thread/process state.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # Python 3.12; typeshed lags
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(static))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # mitmproxy logs every client connect/disconnect at info; keep its warnings and errors only.
    logging.getLogger("mitmproxy").setLevel(max(logging.WARNING, root.level))


class UserRef:
    """The user in a log line: HMAC-SHA256 of the message's user id under a per-deployment key (16 hex digits).

    Keyed, because openids are not secret enough for a plain hash: anybody holding a list of them could hash
    the list and find its users' requests in the logs. Support holding the key finds a known openid's requests
    with ``printf %s "$OPENID" | openssl dgst -sha256 -hmac "$LOG_HASH_KEY" -r | cut -c 1-16``."""

    __slots__ = ("_key", "configured")

    def __init__(self, key: bytes | None = None) -> None:
        self.configured = key is not None
        self._key = key if key is not None else secrets.token_bytes(32)

    @classmethod
    def from_config(cls, key: Secret | None) -> UserRef:
        """``log_hash_key``, or a random key for this process (and a warning that says what that costs)."""
        if key is not None:
            return cls(key.reveal().strip().encode())
        logging.getLogger("wxgate").warning(
            "log_hash_key is not set: user hashes in log lines use a random key of this process, so they do "
            "not correlate across replicas or restarts; set log_hash_key (the same on every replica)"
        )
        return cls()

    def rekeyed(self, key: Secret | None) -> UserRef:
        """After a reload: this one while the key is unchanged (or still unset), else one under the new key."""
        if key is None and not self.configured:
            return self
        if key is not None and self.configured and key.reveal().strip().encode() == self._key:
            return self
        return UserRef.from_config(key)

    def __call__(self, message: Mapping[str, str]) -> str:
        for name in USER_FIELDS:
            if user := message.get(name):
                return hmac.new(self._key, user.encode(), hashlib.sha256).hexdigest()[:16]
        return ""

    def __repr__(self) -> str:
        return f"UserRef(configured={self.configured})"


def log_outcome(o: Outcome, trace_id: str = "", span_id: str = "") -> None:
    if not access.isEnabledFor(logging.INFO):
        return
    fields = o.as_log()
    fields["msg"] = "request"
    if trace_id:
        fields["trace_id"] = trace_id
        fields["span_id"] = span_id
    access.info("request", extra={"fields": fields, "created_wall": time.time()})
