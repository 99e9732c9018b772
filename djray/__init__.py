"""djray: govern image-text training data on Ray Data."""

__version__ = "0.1.0"
