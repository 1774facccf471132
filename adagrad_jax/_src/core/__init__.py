"""Numerics, argument checks, the non-finite policy and placement helpers.

This layer imports nothing else from the package.
"""
