"""API-token authentication (README: Authentication): a pure library, free of aiohttp and typer.

Modules (import the one you need; this package imports nothing, to keep ``lms`` start-up fast):

* :mod:`lms.auth.tokens` — the ``sk-lm-<id>:<secret>`` format, hashing, header parsing, redaction;
* :mod:`lms.auth.timespec` — ``30d`` / ``2027-01-31`` parsing for ``--expires``, ``--grace``,
  ``--since``;
* :mod:`lms.auth.permissions` — :class:`Permission` and THE route / SDK endpoint → access table;
* :mod:`lms.auth.record` — :class:`TokenRecord` and input validation;
* :mod:`lms.auth.registry` — ``tokens.toml`` and the operations of ``lms token``;
* :mod:`lms.auth.verifier` — the daemon's per-request authenticate / authorize;
* :mod:`lms.auth.ratelimit` — per-token requests per minute;
* :mod:`lms.auth.audit` — ``audit.jsonl``;
* :mod:`lms.auth.usage` — ``usage.sqlite3`` and the daemon's in-memory batch.
"""
