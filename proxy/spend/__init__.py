"""What requests cost, and per-key budgets.

* :mod:`.prices` — each request priced from the usage the tap read, with
  the ``genai-prices`` table and the config file's ``[prices]``.
* :mod:`.tracker` — spend batched to the store about once a second, and
  each key's period spend cached for the ``budget`` layer
  (:mod:`proxy.middleware.budget`).
* :mod:`.store`, :mod:`.redis_store` — the ledger: in memory, SQLite (one
  host), Redis (every host). ``sluice usage`` (:mod:`.report`) reads it.
* :mod:`.periods` — day, ISO week, month (UTC), total.
"""
