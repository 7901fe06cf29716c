"""fastsync: a fast, LatentSync-compatible lip-sync engine."""

__version__ = "0.1.0"
