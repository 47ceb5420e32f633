"""Development tooling: the producer simulator, an embedded Redis and the demo. Never imported by the service."""
