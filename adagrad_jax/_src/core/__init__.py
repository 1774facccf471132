"""Numerics, argument checks, the non-finite policy and placement helpers: imports nothing else from the package."""
