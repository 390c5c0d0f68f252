"""Privacy-preserving data-sharing broker."""

__version__ = "0.1.0"
