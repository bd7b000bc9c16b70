"""The control plane on the Unix socket (``lms`` ↔ daemon): :mod:`.app` and the streamed
routes of :mod:`.streams` (``lms log stream``, ``lms chat``). Not a client-facing API."""
