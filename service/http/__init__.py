"""HTTP: the app, routes, the one delivery path, envelope and error mapping, auth, limits, logs, metrics, OpenAPI."""
