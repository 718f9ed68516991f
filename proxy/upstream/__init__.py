"""The call to the backend: wxgate's own keep-alive pool (:mod:`.client`) over a small HTTP/1.1 framing layer
(:mod:`.http1`), with connect/read deadlines and a response size limit. Imports nothing else of wxgate."""

from proxy.upstream.client import UpstreamClient, UpstreamResult

__all__ = ["UpstreamClient", "UpstreamResult"]
