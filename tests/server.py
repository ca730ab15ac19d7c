"""The test suite starts servers with ``services.launch.serve`` (re-exported here)."""

from services.launch import Server, free_port, serve

__all__ = ["Server", "free_port", "serve"]
