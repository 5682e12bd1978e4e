"""Serving: Triton model repository layout, server process, gRPC client."""
