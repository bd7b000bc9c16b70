"""lms: a local LLM server with API-token authentication."""

__version__ = "0.1.0"
