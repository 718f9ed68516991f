"""The system under test for storms and chaos: a shared store, the demo backend and two wxgate replicas.

:class:`Fleet` owns every process of one run (started on free loopback ports, stopped by PID): the demo
backend, ``replicas`` wxgate processes sharing one store URL, and knows how to kill -9 and restart a replica on
its own ports. :class:`Catalog` produces correctly signed (and encrypted) deliveries of one notification for
every protocol, fresh timestamp and nonce per attempt (:func:`proxy.tools.sender.build`), tells from a reply whether
the sender would take it as an acknowledgement, and reads back from a backend request which notification it
carried. :class:`BackendLog` keeps what the backend received across its restarts.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.config import RouteBase, parse_config
from proxy.protocols import wxcrypt, xmlmsg
from proxy.protocols.base import Rejected
from proxy.protocols.wechat_pay_v2 import return_code
from proxy.tools import sender, traffic
from tests.support.procs import Backend, Sidecar

TOKEN = "storm-token"
AES = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APP_ID = "wx2c2769f8efd9abc2"
CORP = "ww1436e0e65a779aee"
PAY_KEY = "192006250b4c09247ec02edce69f6a2d"
V3_KEY = "0123456789abcdef0123456789abcdef"
MCH = "1900000109"
HMAC_SECRET = "storm-hmac-secret"
WH_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
ENV = {"TOKEN": TOKEN, "AES": AES, "PAY": PAY_KEY, "V3": V3_KEY, "HM": HMAC_SECRET, "WH": WH_SECRET}

# What each route promises (its on_backend_failure policy and store_down policy).
ROUTES: dict[str, dict[str, Any]] = {
    "mp": {"path": "/mp", "protocol": "wechat-mp", "token": "${TOKEN}"},
    "mp-safe": {
        "path": "/mp/safe",
        "protocol": "wechat-mp",
        "token": "${TOKEN}",
        "app_id": APP_ID,
        "encoding_aes_key": "${AES}",
        "decrypt_for_backend": True,
    },
    "wecom": {
        "path": "/wecom",
        "protocol": "wecom",
        "token": "${TOKEN}",
        "encoding_aes_key": "${AES}",
        "receive_id": CORP,
        "decrypt_for_backend": True,
    },
    "pay2": {"path": "/pay/v2", "protocol": "wechat-pay-v2", "api_key": "${PAY}", "mch_id": MCH},
    "pay3": {
        "path": "/pay/v3",
        "protocol": "wechat-pay-v3",
        "apiv3_key": "${V3}",
        "mch_id": MCH,
        "decrypt_for_backend": True,
    },
    "hmac": {"path": "/hooks/hmac", "protocol": "hmac", "secret": "${HM}"},
    "std": {"path": "/hooks/std", "protocol": "standard-webhooks", "secret": "${WH}"},
}
PAY = ("pay2", "pay3")
# Notifications without a message id of their own, each kind on the route that carries it. The storm sends them
# as same-second bursts: one sender, one CreateTime for the whole run, differing only in the kind's own field
# (a key of sender + time + event merged them all: the backend took the first, the rest got its reply).
EVENT_KINDS: dict[str, str] = {
    "mp-card": "mp",  # user_get_card, a UserCardCode each
    "mp-sent": "mp-safe",  # subscribe_msg_sent_event, MsgID nested in SubscribeMsgSentEvent/List
    "wecom-contact": "wecom",  # change_contact update_user, a UserID each
    "wecom-external": "wecom",  # change_external_contact, an ExternalUserID each
    "pay3-share": "pay3",  # PROFITSHARING.SUCCESS, one transaction_id, an order each
}
# Backend modes in which the demo backend takes a request (answers it as processed).
TAKING = ("passive", "success", "empty", "ok", "json", "status201", "paysuccess")


@dataclass(frozen=True)
class Timing:
    """The route timing of a run, scaled down from production (deadline 4.5 s, sender timeout 5 s)."""

    deadline: float = 1.5
    backend_timeout: float = 5.0
    lease: float = 8.0  # longer than any backend call, so a live call never loses its claim

    @property
    def sender_timeout(self) -> float:
        """WeChat waits 5 s for a 4.5 s deadline: the same 0.5 s margin."""
        return self.deadline + 0.5

    @property
    def slow(self) -> float:
        """A slow backend: past the deadline, well within backend_timeout."""
        return round(self.deadline + 1.0, 2)


def policy_of(route: str) -> str:
    return "fail" if EVENT_KINDS.get(route, route) in PAY else "ack"


def routes_config(certificate: Path, timing: Timing) -> list[dict[str, Any]]:
    out = []
    for name, spec in ROUTES.items():
        route = {"name": name, **spec}
        route.update(deadline=f"{timing.deadline}s", backend_timeout=f"{timing.backend_timeout}s")
        dedup: dict[str, Any] = {"lease": f"{timing.lease}s"}
        if name == "hmac":
            dedup["fields"] = ["id"]  # the sender's message id; the default (nonce) differs per attempt
        if name == "pay2":
            dedup["store_down"] = "fail_closed"  # one route shows the other store-down policy
        route["dedup"] = dedup
        route["outbox"] = {"backoff_base": "0.2s", "backoff_max": "1s", "max_attempts": 1000}
        if name == "pay3":
            route["platform_certificates"] = [str(certificate)]
        out.append(route)
    return out


class Catalog:
    """Signed deliveries for every route, reply classification, and the notification id in a backend request."""

    def __init__(self, tmp: Path, timing: Timing) -> None:
        key = self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.certificate = tmp / "platform.pem"
        self.certificate.write_bytes(traffic.platform_certificate(key, int(SERIAL, 16), time.time()))
        self.timing = timing
        self.routes_config = routes_config(self.certificate, timing)
        config = parse_config({"routes": self.routes_config}, ENV)
        self.routes: dict[str, RouteBase] = {r.name: r for r in config.routes}
        self.by_path = {r.path: r.name for r in config.routes}
        self._aes = wxcrypt.AesKey.decode("current", AES)
        self.second = int(time.time())  # the CreateTime of every event of the run

    def request(self, route: str, notification: int) -> sender.Request:
        """One delivery of ``notification``: same message id every time, fresh timestamp, nonce, signature."""
        if route in EVENT_KINDS:
            return self._event(route, notification)
        if route == "pay3":
            return self._pay3(notification)
        opts = sender.SendOptions(
            message_id=str(notification),
            content=f"n{notification}",
            user=f"oStormUser{notification % 97}",
        )
        return sender.build(self.routes[route], opts)

    def _pay3(self, notification: int) -> sender.Request:
        # proxy.tools.sender.build would load the signing key from its PEM file per call (~40 ms of RSA checks).
        plaintext = {
            "mchid": MCH,
            "appid": "wxd930ea5d5a258f4f",
            "out_trade_no": f"T{notification}",
            "transaction_id": f"4200{notification}",
            "trade_state": "SUCCESS",
            "amount": {"total": 1, "currency": "CNY"},
        }
        out = traffic.pay_v3_notify(
            ROUTES["pay3"]["path"],
            self._key,
            SERIAL,
            V3_KEY,
            plaintext,
            str(int(time.time())),
            secrets.token_hex(8),
            notification_id=f"EV-{notification}",
        )
        return sender.Request.of(out)

    def _event(self, kind: str, notification: int) -> sender.Request:
        route = EVENT_KINDS[kind]
        path, ts, nonce = ROUTES[route]["path"], str(int(time.time())), secrets.token_hex(8)
        if kind == "pay3-share":
            plaintext = {
                "mchid": MCH,
                "transaction_id": "4200000000000000000000000001",
                "order_id": f"3008{notification}",
                "out_order_no": f"P{notification}",
                "receiver": {
                    "type": "MERCHANT_ID",
                    "account": "1900000201",
                    "amount": 1,
                    "description": "分账",
                },
                "success_time": "2026-01-01T12:00:00+08:00",
            }
            out = traffic.pay_v3_notify(
                path,
                self._key,
                SERIAL,
                V3_KEY,
                plaintext,
                ts,
                nonce,
                notification_id=f"EV-{nonce}",  # whether WeChat Pay keeps it on a retry is unverified
                event_type="PROFITSHARING.SUCCESS",
                resource_nonce=secrets.token_hex(6),
            )
            return sender.Request.of(out)
        head = f"<xml><ToUserName><![CDATA[gh_storm]]></ToUserName><CreateTime>{self.second}</CreateTime>"
        head += "<MsgType><![CDATA[event]]></MsgType>"
        tail = {
            "mp-card": "<FromUserName><![CDATA[oStormSameUser]]></FromUserName><Event><![CDATA[user_get_card]]>"
            "</Event><CardId><![CDATA[pFS7Fjg8kV1IdDz01r4SQwMkuCKc]]></CardId>"
            f"<UserCardCode><![CDATA[{notification}]]></UserCardCode>",
            "mp-sent": "<FromUserName><![CDATA[oStormSameUser]]></FromUserName><Event><![CDATA["
            "subscribe_msg_sent_event]]></Event><SubscribeMsgSentEvent><List><TemplateId><![CDATA[T1]]>"
            f"</TemplateId><MsgID>{notification}</MsgID><ErrorCode>0</ErrorCode></List></SubscribeMsgSentEvent>",
            "wecom-contact": "<FromUserName><![CDATA[sys]]></FromUserName><Event><![CDATA[change_contact]]>"
            f"</Event><ChangeType><![CDATA[update_user]]></ChangeType><UserID><![CDATA[{notification}]]></UserID>",
            "wecom-external": "<FromUserName><![CDATA[sys]]></FromUserName><Event><![CDATA["
            "change_external_contact]]></Event><ChangeType><![CDATA[add_external_contact]]></ChangeType>"
            f"<UserID><![CDATA[zhangsan]]></UserID><ExternalUserID><![CDATA[{notification}]]></ExternalUserID>",
        }[kind]
        xml = (head + tail + "</xml>").encode()
        if route == "wecom":
            out = traffic.wecom_message(path, TOKEN, AES, CORP, xml, ts, nonce, agent_id="1000002")
        else:
            aes = AES if route == "mp-safe" else None
            out = traffic.mp_message(path, TOKEN, xml, ts, nonce, encoding_aes_key=aes, app_id=APP_ID)
        return sender.Request.of(out)

    def classify(self, route: str, status: int, body: bytes) -> tuple[str, str]:
        """``(verdict, content)``: ``ack`` (the sender stops retrying), ``failure`` (the protocol's retry-me
        answer) or ``invalid``; ``content`` is the text of a passive reply (opened when sealed), else ""."""
        route = EVENT_KINDS.get(route, route)
        if route in ("mp", "mp-safe", "wecom"):
            if status == 502 and body == b"":
                return "failure", ""
            if status != 200:
                return "invalid", ""
            if body == b"" or (body == b"success" and route != "wecom"):
                return "ack", ""
            content = self._passive(route, body)
            return ("ack", content) if content else ("invalid", "")
        if route == "pay2":
            code = return_code(body) if status == 200 else None
            return {"SUCCESS": "ack", "FAIL": "failure"}.get(code or "", "invalid"), ""
        if route == "pay3":
            if status in (200, 204) and body == b"":
                return "ack", ""
            return ("failure" if status == 500 and b'"FAIL"' in body else "invalid"), ""
        if 200 <= status < 300:
            return "ack", ""
        return ("failure" if status == 502 else "invalid"), ""

    def _passive(self, route: str, body: bytes) -> str:
        """The Content of a passive text reply; sealed ones must carry a valid signature and open."""
        try:
            fields = xmlmsg.parse(body)
            if route != "mp":
                given = fields["MsgSignature"]
                parts = (fields["TimeStamp"], fields["Nonce"], fields["Encrypt"])
                if wxcrypt.sha1_signature(TOKEN, *parts) != given:
                    return ""
                receive_id = APP_ID if route == "mp-safe" else CORP
                fields = xmlmsg.parse(wxcrypt.decrypt([self._aes], fields["Encrypt"], (receive_id,)).message)
        except (Rejected, KeyError):
            return ""
        return fields.get("Content", "") if fields.get("MsgType") == "text" else ""

    def notification_of(self, request: dict[str, Any]) -> tuple[str, int] | None:
        """``(route, notification id)`` of a request the backend received, None for anything else."""
        route = self.by_path.get(request["path"])
        body = request["body"].encode()
        try:
            if route in ("mp", "mp-safe", "wecom"):
                fields = xmlmsg.parse(body)
                ids = (
                    "MsgId",
                    "UserCardCode",
                    "SubscribeMsgSentEvent.List.MsgID",
                    "ExternalUserID",
                    "UserID",
                )
                return route, int(next(fields[f] for f in ids if f in fields))
            if route == "pay2":
                return route, int(xmlmsg.parse(body)["transaction_id"].removeprefix("4200"))
            if route == "pay3":
                resource = json.loads(body)["resource"]
                if "out_order_no" in resource:
                    return route, int(resource["out_order_no"].removeprefix("P"))
                return route, int(resource["transaction_id"].removeprefix("4200"))
            if route == "hmac":
                return route, int(parse_qs(body.decode())["id"][0])
            if route == "std":
                return route, int(json.loads(body)["data"]["id"])
        except (Rejected, KeyError, ValueError, TypeError, StopIteration):
            return None
        return None


@dataclass
class BackendLog:
    """Every request the backend received (kept across backend restarts), by notification."""

    catalog: Catalog
    requests: list[dict[str, Any]] = field(default_factory=list)

    def add(self, requests: list[dict[str, Any]]) -> None:
        self.requests.extend(requests)

    def taken(self, current: list[dict[str, Any]]) -> dict[int, list[float]]:
        """notification -> when the backend took it (requests answered in a taking mode), from the log and
        ``current`` (what the running backend process holds)."""
        out: dict[int, list[float]] = {}
        for r in [*self.requests, *current]:
            found = self.catalog.notification_of(r)
            if found is not None and r.get("mode", "passive").split(":")[0] in (*TAKING, "slow"):
                out.setdefault(found[1], []).append(float(r["at"]))
        return out


class Fleet:
    """The demo backend and ``replicas`` wxgate processes sharing ``store``."""

    def __init__(self, tmp: Path, store: str, catalog: Catalog, replicas: int = 2) -> None:
        self.tmp, self.store, self.catalog = tmp, store, catalog
        self.backend = Backend(tmp)
        self.log = BackendLog(catalog)
        cfg = {"upstream": self.backend.url, "store": store, "routes": catalog.routes_config}
        self.config = cfg
        self.replicas = [Sidecar(tmp, cfg, env=ENV, name=f"replica-{i}") for i in range(replicas)]
        self.live: set[int] = set()

    def start(self) -> Fleet:
        self.backend.start()
        for i, r in enumerate(self.replicas):
            r.start()
            self.live.add(i)
        return self

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()
        self.backend.stop()

    def kill(self, i: int) -> None:
        """kill -9 replica ``i`` (the load balancer stops sending to it first)."""
        self.live.discard(i)
        self.replicas[i].kill()

    def restart(self, i: int, give_up: float = 60.0) -> None:
        """Start replica ``i`` again on its ports, as a supervisor would, and add it to the load balancer once
        ready: it serves at once, and is ready once its store answers (it may still be down)."""
        old = self.replicas[i]
        self.replicas[i] = Sidecar(
            self.tmp, self.config, env=ENV, port=old.port, admin_port=old.admin_port, name=f"replica-{i}"
        )
        self.replicas[i].start(wait=give_up)
        self.live.add(i)

    def backend_requests(self) -> list[dict[str, Any]]:
        return self.backend.requests()

    def stop_backend(self) -> None:
        """Stop the backend process (connections refused); :meth:`start_backend` brings one back on its port."""
        self.backend.set_mode("down")
        time.sleep(self.catalog.timing.slow + 0.2)  # a slow request still being answered finishes first
        self.log.add(self.backend.requests())
        self.backend.stop()
        self.backend = Backend(self.tmp, mode="down", port=self.backend.port)

    def start_backend(self, mode: str = "passive") -> None:
        self.backend.start()
        self.backend.set_mode(mode)
