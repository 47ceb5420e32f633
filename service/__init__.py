"""Running tasks of the codebase embedder, served from a background-refreshed Redis snapshot."""

from importlib import metadata

try:
    __version__ = metadata.version("running-tasks-service")
except metadata.PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0.0.0+unknown"
