"""Running tasks of the codebase embedder, served from a background-refreshed Redis snapshot."""
