"""The ASGI entry point the Procfile runs: `uvicorn service.app:app`."""

from __future__ import annotations

import sys
from typing import Any

from service.http.access_log import configure_logging
from service.http.app import create_app
from service.settings import SettingsError, load_settings, log_settings_source, settings_file

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # The app is built from the settings on first use, not on import, so that importing this module reads no
    # environment; bad settings stop startup with one line.
    if name == "app":
        try:
            source, settings = settings_file(), load_settings()
        except SettingsError as exc:
            print(f"error: invalid settings: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        configure_logging(settings)
        log_settings_source(source)
        application = create_app(settings, settings_from=source)
        globals()["app"] = application
        return application
    raise AttributeError(name)
