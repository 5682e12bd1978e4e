"""Shared test helpers (importable as `tests.helpers` once the repository root is on sys.path)."""
