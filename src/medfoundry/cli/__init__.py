"""Command-line interface (``medfoundry ...``)."""
