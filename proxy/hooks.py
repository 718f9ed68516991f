"""Hook dispatch for the embedded master: each event's handlers are looked up once, not on every event.

mitmproxy's ``AddonManager.trigger_event`` walks the whole addon chain for every event (and once more for the
``update`` event it sends after each flow event), making a coroutine, a generator and a context manager per
addon per event whether or not the addon implements the hook: with wxgate's five core addons and eight of its
own, about a fifth of the CPU a verified request costs. :class:`HookDispatch` resolves, per event name, the
handlers in chain order once (the chain only changes while the master is being built; any change clears the
cache) and calls just those. ``AddonHalt`` ends the event. An exception in a handler is logged as an "Addon
error" and, unlike mitmproxy, **fails the request closed** when it happens before the answer is sent (any
request or response event of an HTTP flow): the flow is answered with a 5xx in its protocol's failure form (500
on a path no route matched), reason ``internal_error``, so no later check is skipped and nothing reaches the
backend on the strength of a hook that did not finish (:func:`fail_closed`). The next handlers still run and see
the answer (metrics, tracing and the access log record it; the checks and the forwarding skip an answered flow).

:func:`embedded_master` builds the master with it, without the deprecated ``add_log`` event, without
mitmproxy's debug-only type check of every request and response (:func:`skip_message_typechecks`), and with
option reads that do not deep-copy immutable values (:func:`option_reads_without_copies`), and task names
that do not read the environment (:func:`task_names_without_environ`).
"""

from __future__ import annotations

import copy
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks, http, options, optmanager
from mitmproxy import master as mitm_master
from mitmproxy.utils import asyncio_utils

from proxy.pipeline.exchange import ensure_exchange
from proxy.pipeline.replies import respond
from proxy.protocols.base import Reply

logger = logging.getLogger("mitmproxy.addonmanager")
_UPDATE = hooks.UpdateHook([])
# Events of an HTTP flow that run before its answer is sent: an exception in one fails the request closed.
_BEFORE_ANSWER = frozenset({"requestheaders", "request", "responseheaders", "response"})
_INTERNAL_ERROR = Reply(500, b"", "text/plain; charset=utf-8", "failure")


def fail_closed(flow: http.HTTPFlow) -> None:
    """Answer ``flow`` as a failure because a hook raised: the route's backend-failure reply (the sender retries;
    Pay's FAIL form), or 500 where no route matched."""
    ex = ensure_exchange(flow)
    ex.outcome.verdict = "rejected"
    ex.outcome.reason = "internal_error"
    route = ex.route
    respond(
        flow, ex, route.protocol.backend_failure_reply(ex.verified) if route is not None else _INTERNAL_ERROR
    )


class HookDispatch(addonmanager.AddonManager):
    def __init__(self, master: mitm_master.Master) -> None:
        super().__init__(master)  # type: ignore[no-untyped-call]
        self._handlers: dict[str, tuple[Callable[..., Any], ...]] = {}

    def register(self, addon: Any) -> Any:
        self._handlers.clear()
        return super().register(addon)  # type: ignore[no-untyped-call]

    def add(self, *addons: Any) -> None:
        super().add(*addons)  # type: ignore[no-untyped-call]
        self._handlers.clear()

    def remove(self, addon: Any) -> None:
        super().remove(addon)  # type: ignore[no-untyped-call]
        self._handlers.clear()

    def clear(self) -> None:
        super().clear()  # type: ignore[no-untyped-call]
        self._handlers.clear()

    def handlers(self, event: hooks.Hook) -> tuple[Callable[..., Any], ...]:
        """The callables that handle ``event``, in chain order (sub-addons after their parent)."""
        found = self._handlers.get(event.name)
        if found is None:
            found = tuple(func for addon in self.chain for _, func in self._iter_hooks(addon, event))
            self._handlers[event.name] = found
        return found

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        """mitmproxy's, with the event's arguments read once (``Hook.args`` walks ``dataclasses.fields``) and
        the ``update`` event after a flow event only made when an addon handles it (none of wxgate's does)."""
        args = event.args()
        await self._run(self.handlers(event), args, event.name)
        if isinstance(args[0], flow.Flow) and (update := self.handlers(_UPDATE)):
            await self._run(update, [[args[0]]], _UPDATE.name)

    async def trigger_event(self, event: hooks.Hook) -> None:
        handlers = self.handlers(event)
        if handlers:
            await self._run(handlers, event.args(), event.name)

    async def _run(self, handlers: tuple[Callable[..., Any], ...], args: list[Any], event: str) -> None:
        for func in handlers:
            try:
                result = func(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as e:
                logger.error(f"Addon error in {event}: {e}", exc_info=True)
                if event in _BEFORE_ANSWER and isinstance(args[0], http.HTTPFlow):
                    try:
                        fail_closed(args[0])
                    except Exception:  # the failure reply itself failed: no answer at all, never the request
                        logger.exception("failing the request closed failed; killing it")
                        args[0].kill()


def embedded_master(opts: options.Options) -> mitm_master.Master:
    """A master whose addons are dispatched by :class:`HookDispatch`, without the terminal log and without
    mitmproxy's deprecated ``add_log`` event.

    The latter is a root logging handler that, for every record (one access line per request), formats it
    again, wakes the loop with ``call_soon_threadsafe`` and triggers ``add_log`` on every addon: no addon here
    implements it (the stdlib ``logging`` setup in :mod:`proxy.observability.logs` is how wxgate logs)."""
    skip_message_typechecks()
    option_reads_without_copies()
    task_names_without_environ()
    master = mitm_master.Master(opts, with_termlog=False)
    master._legacy_log_events.uninstall()
    master.options.changed.disconnect(master.addons._configure_all)
    master.addons = HookDispatch(master)
    return master


def _no_typecheck(self: http.MessageData) -> None:
    return None


def skip_message_typechecks() -> None:
    """Turn off the runtime type check of every ``Request``/``Response`` field.

    mitmproxy defines ``MessageData.__post_init__`` only ``if __debug__``: a development check that ``python -O``
    removes, walking ``dataclasses.fields`` and ``typing`` introspection for each of the six fields of every
    request and response (~50 µs per proxied request, ~4% of a verified request's CPU). ``-O`` would also strip
    mitmproxy's protocol assertions and wxgate's own, so this turns off just that check; the values come from
    mitmproxy's HTTP/1 parser and from wxgate's typed reply code (mypy --strict)."""
    http.MessageData.__post_init__ = _no_typecheck  # type: ignore[method-assign]


_IMMUTABLE = frozenset({str, int, float, bool, bytes, type(None)})


def _current(self: Any) -> Any:
    v = self._default if self.value is optmanager.unset else self.value
    return v if type(v) in _IMMUTABLE else copy.deepcopy(v)


def option_reads_without_copies() -> None:
    """Reading an option no longer deep-copies an immutable value (mitmproxy's ``_Option.current`` deep-copies
    every value it returns, twice for a default; its HTTP layer reads several options per request). A deep copy
    of a str, number, bool or None is that same object, so this changes nothing but the cost; lists and other
    mutable values are still copied."""
    optmanager._Option.current = _current  # type: ignore[method-assign]


def _task_debug_info(task: Any, *, name: str, client: tuple[Any, ...] | None = None) -> None:
    task.created = time.time()
    task.set_name(name)
    if client:
        task.client = client


def task_names_without_environ() -> None:
    """Name mitmproxy's tasks without looking up ``PYTEST_CURRENT_TEST`` in ``os.environ`` each time.

    mitmproxy makes a task per hook event (three or four per request) and, in its ``set_task_debug_info``,
    reads that variable for every one, to add the running test's name to the task name (encoding the key and
    decoding the value: ~1.5% of a verified request's CPU). The task keeps its name, creation time and client
    address, which is what ``task_repr`` and mitmproxy's debug dump show."""
    asyncio_utils.set_task_debug_info = _task_debug_info
