"""JSON logging: one line per request from its outcome record, and JSON for everything else wxgate logs.

Secrets, tokens, ciphertexts and message contents are never logged: the outcome record holds only closed
labels, numbers, the dedup key's hash and the user's hash (:func:`user_ref`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from proxy.exchange import Outcome

access = logging.getLogger("wxgate.access")
# Where the sender names its user: Official Account/WeCom messages (FromUserName), Pay v2 notices (openid),
# Pay v3 notices (the decrypted resource's payer.openid).
USER_FIELDS = ("FromUserName", "openid", "payer.openid")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["msg"] = record.getMessage()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def setup(level: str = "info") -> None:
    # What the formatter never prints, logging need not collect for every record (the logging HOWTO's
    # "Optimization" list): the caller's file and line walk the stack, the rest read thread/process state.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # Python 3.12; typeshed lags
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # mitmproxy logs every client connect/disconnect at info; keep its warnings and errors only.
    logging.getLogger("mitmproxy").setLevel(max(logging.WARNING, root.level))


def user_ref(message: Mapping[str, str]) -> str:
    """A short SHA-256 of the message's user id: support can hash a known openid and find its requests, while
    the log never holds the id itself."""
    for name in USER_FIELDS:
        if user := message.get(name):
            return hashlib.sha256(user.encode()).hexdigest()[:16]
    return ""


def log_outcome(o: Outcome, trace_id: str = "", span_id: str = "") -> None:
    if not access.isEnabledFor(logging.INFO):
        return
    fields = o.as_log()
    fields["msg"] = "request"
    if trace_id:
        fields["trace_id"] = trace_id
        fields["span_id"] = span_id
    access.info("request", extra={"fields": fields, "created_wall": time.time()})
