"""The GatewayPool Kubernetes operator (kopf). Built in a later milestone."""
