"""engineforge: build, validate, serve and load-test optimized transformer classifiers."""

__version__ = "0.1.0"
