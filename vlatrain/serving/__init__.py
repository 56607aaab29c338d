"""Serving a policy over the network: ``vlatrain serve`` and its client (docs/deploy.md).

- :mod:`~vlatrain.serving.codec`: msgpack messages with numpy arrays as an extension type;
- :mod:`~vlatrain.serving.protocol`: the messages, their fields and error codes;
- :mod:`~vlatrain.serving.runtime`: a loaded :class:`vlatrain.policy.Policy` as per-session state;
- :mod:`~vlatrain.serving.engine`: sessions and the micro-batching queue;
- :mod:`~vlatrain.serving.server`: the WebSocket server (``websockets``), ``/healthz``, token;
- :mod:`~vlatrain.serving.client`: :class:`RemotePolicy`, the local policy's interface remotely.

Needs the ``serve`` extra (``pip install -e ".[serve]"``); nothing here is imported by
``vlatrain`` itself.
"""
