"""Per-parameter state arrays, created like the parameters (shape, dtype, sharding)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from adagrad_jax._src.core import checks, placement, quantized, trees
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
        dtype = accumulator_dtype
        if quantized.is_int8_dtype(dtype) and len(p.shape) >= 2:
            codes = quantized.full((), initial_accumulator_value).codes
            return quantized.Int8Accumulator(
                placed(p, codes, jnp.uint8),
                _placed_blocks(p, quantized.scales_shape(p.shape), initial_accumulator_value),
            )
        if quantized.is_int8_dtype(dtype):  # vectors and scalars keep float32
            dtype = jnp.float32
        return placed(p, initial_accumulator_value, accumulator_dtype_for(p.dtype, dtype))

    def placed(p, value, dtype):
        if isinstance(p, jax.core.Tracer):
            # Under jit on an Explicit mesh the sharding is part of the type:
            # keep it, so the first update does not change the state's type.
            typed = placement.typed_sharding(p)
            out = jnp.full(p.shape, value, dtype, out_sharding=typed)
            return placement.tie_to(out, p)
        sharding = getattr(p, "sharding", None)
        if isinstance(p, jax.ShapeDtypeStruct) or sharding is None:
            if isinstance(getattr(sharding, "mesh", None), jax.sharding.AbstractMesh):
                return jnp.full(p.shape, value, dtype, out_sharding=sharding)
            return jnp.full(p.shape, value, dtype, device=sharding)
        return jnp.full_like(p, value, dtype=dtype)

    return jax.tree_util.tree_map_with_path(leaf, params)


def companion_dtype(accumulator_dtype: Any) -> Any:
    """The dtype of a slot kept beside the sum of squares (ftrl's z, adagrad_da's z,
    adagrad_momentum's m): float32 when the sum is 8-bit, `accumulator_dtype` otherwise."""
    return jnp.float32 if quantized.is_int8_dtype(accumulator_dtype) else accumulator_dtype


def _placed_blocks(p: Any, shape: tuple[int, ...], value: Any) -> Any:
    """The float32 block scales of an int8 accumulator of `p`: `shape` (``p.shape[:-1]``
    plus the blocks), placed like `p` with its last axis unsplit (blocks lie in rows)."""
    sharding = jax.typeof(p).sharding if checks.is_traced(p) else getattr(p, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = tuple(sharding.spec)[: max(len(shape) - 1, 0)]
        sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
        if checks.is_traced(p):
            if jax.sharding.get_abstract_mesh().empty and placement.typed_sharding(p) is None:
                return jnp.full(shape, value, jnp.float32)
            out = jnp.full(shape, value, jnp.float32, out_sharding=sharding)
            return placement.tie_to(out, p)
        if isinstance(sharding.mesh, jax.sharding.AbstractMesh):
            return jnp.full(shape, value, jnp.float32, out_sharding=sharding)
        return jnp.full(shape, value, jnp.float32, device=sharding)
    if checks.is_traced(p):
        return jnp.full(shape, value, jnp.float32)
    return jnp.full(shape, value, jnp.float32, device=sharding)


def stack_slots(*trees: Any) -> Any:
    """One array per parameter holding several slots: ``stack([s0, s1, ...], axis=-1)``.

    The trees must have one structure, and their leaves one shape and dtype
    each; the result keeps their sharding (with the slot axis unsplit).
    """
    return jax.tree.map(lambda *leaves: jnp.stack(leaves, axis=-1), *trees)


def slot(stacked: Any, index: int) -> Any:
    """Slot `index` of a tree made by `stack_slots`: each leaf's ``[..., index]``."""
    return jax.tree.map(lambda leaf: leaf[..., index], stacked)


# The state of an optimizer with several per-coordinate slots (`ftrl`'s n and
# z, `adagrad_da`'s z and G) is a tuple of trees, in one of two layouts:
#
# - stacked, ``(stacked,)``: one array per parameter with the slots on a last
#   axis (`stack_slots`). A table row's whole state is one contiguous run,
#   read by one gather and written by one scatter;
# - separate, ``(s0, s1, ...)``: one tree per slot (0.2's layout). On XLA:CPU
#   a dense-gradient step is cheaper this way: an elementwise step whose
#   output is stacked is not vectorized there (measured 3x slower on a 4M
#   leaf), while the row path gathers and scatters once per slot.
#
# The helpers below read and write either, for trees (`init`, the views of a
# state) and for a rule's arrays (dense leaves or gathered rows).


def layout_slots(trees: Sequence[Any], stacked: bool) -> tuple:
    """The state's tuple of slot trees: ``(stack_slots(*trees),)`` or ``tuple(trees)``."""
    return (stack_slots(*trees),) if stacked else tuple(trees)


def slot_tree(slots: tuple, index: int) -> Any:
    """Slot `index` of a state's tuple of slot trees, in either layout."""
    return slot(slots[0], index) if len(slots) == 1 else slots[index]


def check_layout(caller: str, slots: Any, stacked: bool, count: int) -> None:
    """Raises if a state's slot tuple is not in the layout the optimizer was built with."""
    want = 1 if stacked else count
    if not isinstance(slots, tuple) or len(slots) != want:
        got = len(slots) if isinstance(slots, tuple) else type(slots).__name__
        kept = "its slots stacked in one" if stacked else "one per slot"
        raise ValueError(
            f"{caller}(stack_slots={stacked}): state.slots holds {got} trees, but this"
            f" optimizer keeps {want} ({kept})."
            f" The state was made by {caller}(stack_slots={not stacked}) or by another"
            " optimizer: build the optimizer with the stack_slots that made the state, or"
            " move the state with adagrad_jax.restore_structure(jax.eval_shape(tx.init,"
            " params), state)."
        )


def unpack(arrays: Sequence[Any], count: int, stacked: bool) -> tuple:
    """A rule's `count` slot arrays from the arrays it is given (stacked or separate)."""
    if stacked:
        return tuple(arrays[0][..., i] for i in range(count))
    return tuple(arrays[:count])


def pack(values: Sequence[Any], stacked: bool) -> tuple:
    """A rule's new slot arrays, in the layout it was given them."""
    return (jnp.stack(values, axis=-1),) if stacked else tuple(values)


def placed_full(p: Any, shape: tuple[int, ...], value: Any, dtype: Any, *, replicate: bool) -> Any:
    """`jnp.full(shape, value, dtype)` placed for the parameter `p`.

    An array with the parameter's shape (``replicate=False``) takes the
    parameter's sharding; any other statistic (``replicate=True``) is
    replicated over the parameter's mesh. Works on arrays, on
    `jax.ShapeDtypeStruct`s and under `jax.jit`, where a parameter's
    sharding is followed when a mesh is set (``jax.set_mesh``) and left to
    the compiler (or to ``out_shardings``) otherwise.
    """
    if checks.is_traced(p):
        if jax.sharding.get_abstract_mesh().empty:
            return jnp.full(shape, value, dtype)
        sharding = jax.typeof(p).sharding
        if replicate:
            sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        return jnp.full(shape, value, dtype, device=sharding)
    sharding = getattr(p, "sharding", None)
    if replicate and isinstance(sharding, jax.sharding.NamedSharding):
        sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jnp.full(shape, value, dtype, device=sharding)
