"""Per-parameter state arrays, created like the parameters (shape, dtype, sharding)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from adagrad_jax._src.core import placement, trees
from adagrad_jax._src.core.numerics import accumulator_dtype_for


def init_count() -> jax.Array:
    return jnp.zeros([], jnp.int32)


def init_sum_of_squares(
    caller: str, params: Any, initial_accumulator_value: Any, accumulator_dtype: Any
) -> Any:
    """A tree like `params` filled with tau, in the accumulator dtype.

    Works on arrays, `jax.ShapeDtypeStruct`s and Python scalars (a float leaf
    is a float32 scalar, float64 with 64-bit mode on, as `jnp.asarray` makes
    it) and keeps each leaf's sharding.

    Raises:
      TypeError: for a leaf that is not float or complex (an int or bool,
        Python or JAX), naming its path.
    """

    def leaf(path, p):
        if not hasattr(p, "dtype") or not hasattr(p, "shape"):
            p = jnp.asarray(p)  # A Python scalar, as optax accepts them.
        trees.check_param_dtype(caller, path, p.dtype)
        dtype = accumulator_dtype_for(p.dtype, accumulator_dtype)
        if isinstance(p, jax.core.Tracer):
            # Under jit on an Explicit mesh the sharding is part of the type:
            # keep it, so the first update does not change the state's type.
            typed = placement.typed_sharding(p)
            out = jnp.full(p.shape, initial_accumulator_value, dtype, out_sharding=typed)
            return placement.tie_to(out, p)
        sharding = getattr(p, "sharding", None)
        if isinstance(p, jax.ShapeDtypeStruct) or sharding is None:
            if isinstance(getattr(sharding, "mesh", None), jax.sharding.AbstractMesh):
                return jnp.full(p.shape, initial_accumulator_value, dtype, out_sharding=sharding)
            return jnp.full(p.shape, initial_accumulator_value, dtype, device=sharding)
        return jnp.full_like(p, initial_accumulator_value, dtype=dtype)

    return jax.tree_util.tree_map_with_path(leaf, params)


def stack_slots(*trees: Any) -> Any:
    """One array per parameter holding several slots: ``stack([s0, s1, ...], axis=-1)``.

    The optimizers with more than one per-coordinate slot (`ftrl`'s n and z,
    `adagrad_da`'s z and G) keep them in one array per parameter,
    with the slots on a last axis: a table row's whole state is then one
    contiguous run of memory, read by one gather and written by one scatter.
    The trees must have one structure, and their leaves one shape and dtype
    each; the result keeps their sharding (with the slot axis unsplit).
    """
    return jax.tree.map(lambda *leaves: jnp.stack(leaves, axis=-1), *trees)


def slot(stacked: Any, index: int) -> Any:
    """Slot `index` of a tree made by `stack_slots`: each leaf's ``[..., index]``."""
    return jax.tree.map(lambda leaf: leaf[..., index], stacked)
