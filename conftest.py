"""Test configuration shared by tests/ and the doctests in adagrad_jax/.

Every test runs under strict dtype promotion and rank promotion errors, so an
implicit float64 -> float32 or bfloat16 -> float32 mix in the library fails
loudly instead of silently changing precision. 64-bit mode stays off (the
default users have); tests that need float64 enter `jax.enable_x64(True)`.
"""

import jax

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

# adagrad_jax/nnx.py needs Flax (the `recipes` extra); without it its doctests are not collected.
try:
    import flax.nnx  # noqa: F401
except ImportError:
    collect_ignore = ["adagrad_jax/nnx.py", "adagrad_jax/_src/flax_nnx.py"]
