"""gradstore: a reusable LESS gradient datastore for choosing instruction-tuning data."""

__version__ = "0.1.0"
