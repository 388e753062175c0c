"""Cashcast core: configuration, workspace layout, data contracts and safe file output."""

__version__ = "0.1.0"
