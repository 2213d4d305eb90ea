"""falcon-lite: buffered sequential neural posterior estimation, run and stress-tested."""

__version__ = "0.1.0"
