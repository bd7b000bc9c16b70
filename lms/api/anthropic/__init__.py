"""The Anthropic-compatible API: ``POST /v1/messages`` and ``count_tokens`` (:mod:`.messages`),
its bodies read by :mod:`.request`."""
