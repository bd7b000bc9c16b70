"""Remote engines: OpenAI-compatible servers whose models lms serves behind its token gate
(docs/REMOTES.md)."""
