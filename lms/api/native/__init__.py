"""LM Studio's native REST API (``/api/v1/*``): the model list, stateful chat, and model
management (load, unload, download)."""
