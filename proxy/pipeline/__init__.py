"""What happens to one request between the edge and the backend.

- :mod:`.exchange`   per-request state (:class:`~.exchange.Exchange`) and the :class:`~.exchange.Outcome` it ends with;
- :mod:`.routes`     the route table: configured paths, templates, and the spellings that impersonate them;
- :mod:`.backend_leg` the decisions about the backend call: early reply, store down, failure, durable-then-ack;
- :mod:`.forwarding` the request to the backend and the classification of its answer;
- :mod:`.replies`    answering a flow in the protocol's form; :mod:`.settlement` the outcome of a claim;
- :mod:`.outbox`     redelivering what was acknowledged but not yet delivered.

Imports only protocols, stores, upstream, config and observability; never addons, tools or the root modules.
"""
