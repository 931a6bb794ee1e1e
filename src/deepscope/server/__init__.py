"""The local dashboard (``deepscope serve``): a FastAPI app over the run store, with offline static files.

``create_app`` needs the ``web`` extra (fastapi, uvicorn); it is imported lazily, so the
pure data functions of ``deepscope.server._api`` stay importable without the web stack.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_bind", "create_app", "is_loopback"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from deepscope.server import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
