"""The Dash dashboard of the workbench: ``create_app(runs_dir)`` and ``serve(runs_dir, host, port)``."""

from __future__ import annotations

from app.main import create_app, serve

__all__ = ["create_app", "serve"]
