"""The OpenAI-compatible API (``/v1/*``): models, chat completions and completions
(:mod:`.completions`), embeddings, and the stateful Responses API with its MCP tool loop."""
