"""What happens to one request between the edge and the backend.

- :mod:`.exchange`     per-request state (:class:`~.exchange.Exchange`), ending in an
                       :class:`~proxy.observability.outcome.Outcome`;
- :mod:`.routes`       the route table: configured paths, templates, and the spellings that impersonate them;
- :mod:`.claims`       a notification's dedup key as the store keeps it; :mod:`.lookup_note` what its first claim
                       files for ``wxgate lookup``;
- :mod:`.policy`       deadline policies: when wxgate acknowledges on the backend's behalf;
- :mod:`.backend_leg`  the decisions about the backend call: early reply, store down, failure, durable-then-ack;
- :mod:`.backpressure` at most ``backend_concurrency`` calls in flight to a backend;
- :mod:`.rejection_budget` sources that failed verification too often to be worth verifying for a while;
- :mod:`.forwarding`   the request to the backend and the classification of its answer;
- :mod:`.replies`      answering a flow in the protocol's form; :mod:`.settlement` the outcome of a claim;
- :mod:`.outbox`       redelivering what was acknowledged but not yet delivered.

The public surface is these modules (``from proxy.pipeline.exchange import Exchange``): the package re-exports no
names, so importing one stage never loads the others. Imports only protocols, stores, upstream, config and
observability; never addons, tools or the root modules (tests/test_layout.py).
"""

__all__ = [
    "backend_leg",
    "backpressure",
    "claims",
    "exchange",
    "forwarding",
    "lookup_note",
    "outbox",
    "policy",
    "rejection_budget",
    "replies",
    "routes",
    "settlement",
]
