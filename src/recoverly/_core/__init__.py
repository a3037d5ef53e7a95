"""Shared machinery for recoverly's strategies. Nothing here is public."""
