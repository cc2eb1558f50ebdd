"""rtml: a realtime MLOps pipeline for Bitcoin transaction fees, embedded by default."""

__version__ = "0.1.0"
