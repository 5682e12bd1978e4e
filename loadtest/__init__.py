"""gRPC load generator, metrics and reports."""
