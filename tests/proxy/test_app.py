"""The composition root's own addon: what happens to a request's state once it is answered."""

from __future__ import annotations

import warnings

from mitmproxy import http
from mitmproxy.test import tflow

from proxy.pipeline.exchange import ensure_exchange, exchange

with warnings.catch_warnings():
    # proxy.app imports mitmproxy.master, which imports every default addon; proxyauth's ldap3 uses a
    # deprecated pyasn1 name on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.addons import tlsconfig
    from mitmproxy.proxy.layers.http import HttpRequestHook

    from proxy.app import Lifecycle, ListenerTls
    from proxy.hooks import embedded_master


def test_an_answered_flow_lets_go_of_its_exchange() -> None:
    f = tflow.tflow()
    ex = ensure_exchange(f)
    f.response = http.Response.make(200, b"success")
    Lifecycle().response(f)
    assert exchange(f) is None
    assert (
        ex.outcome.route == "unmatched"
    )  # whoever still holds it (a late backend call) keeps a whole record


def test_once_serving_the_startup_heap_is_frozen_and_young_collections_are_rarer() -> None:
    """A young collection every 700 allocations promotes the cycles of requests still in flight into the old
    generation, whose full collections are the longest pauses under load (docs/benchmarks.md)."""
    import gc

    from proxy.app import GC_YOUNG_THRESHOLD

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, *before[1:])  # CPython's default (an in-process wxgate earlier may have raised it)
        Lifecycle().running()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def test_a_failed_flow_lets_go_of_its_exchange() -> None:
    f = tflow.tflow()
    ensure_exchange(f)
    Lifecycle().error(f)
    assert exchange(f) is None


async def test_mitmproxys_tls_addon_never_answers_a_request_itself() -> None:
    """mitmproxy's TlsConfig answers paths ending in /mitmproxy-<serial>.crl with its CRL; wxgate's must not."""
    from mitmproxy import options

    flow = tflow.tflow()
    stock, ours = embedded_master(options.Options()), embedded_master(options.Options())
    stock.addons.add(tlsconfig.TlsConfig())
    ours.addons.add(ListenerTls())
    assert stock.addons.handlers(HttpRequestHook(flow))  # what ListenerTls leaves out
    assert ours.addons.handlers(HttpRequestHook(flow)) == ()
