"""The implementation of adagrad_jax, in layers.

ARCHITECTURE.md at the repository root draws them, a line per module.
"""
