"""Realtime sessions: OpenAI Realtime and Gemini Live WebSockets, passed through.

What Sluice guarantees for a session (the details beside the code:
``routes.py``, ``refusal.py``, ``upstream.py``, ``relay.py``, ``usage.py``):

* **Routes** mirror the providers': ``/v1/realtime?model=…`` and Gemini
  Live's ``/ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent``
  (and the Vertex AI form), with or without the ``/openai``/``/gemini``
  prefix. Any other WebSocket is closed 1008, the reason naming the path.
* **Credentials both ways.** The client's key (any header an SDK uses,
  ``?key=``, or a browser's ``openai-insecure-api-key.<key>`` subprotocol)
  is checked like an HTTP request's and never forwarded; the server-held
  key goes upstream in a header, never in the URL; the browser gets the
  ``realtime`` subprotocol back, never its key. A key's provider and model
  lists apply (the model is in ``?model=`` for OpenAI and in Gemini's first
  ``setup`` message, which is read, checked and forwarded unchanged).
* **Refusals are closes with a reason** (the code table in ``refusal.py``),
  sent after accepting: a browser cannot read a refused handshake.
* **Messages pass untouched**: text as text, binary as binary, each message
  whole, in order; no compression on either side. Close codes and reasons
  pass both ways; either side's end closes the other at once.
* **Bounded**: backpressure both ways, a maximum message size, an idle
  timeout, keepalive pings both ways; on SIGTERM sessions run on for the
  drain window, then close with 1001.
* **Accounted**: a session is one request against rpm at connect and holds
  one concurrency slot while open; the usage the provider reports
  (``response.done``, ``usageMetadata``) is charged to tpm at its end and
  logged in its one access-log line, written at close.

Nothing here is compiled (``setup.py``): a session's cost is in the
websocket protocols, not in this glue. This ``__init__`` imports nothing,
so the request context can import ``routes`` without a cycle.
"""
