"""Privacy-preserving data-sharing broker."""

__version__ = "0.2.0"
