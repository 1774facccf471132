"""Stochastic rounding to bfloat16 and float16, with counter-based random numbers.

A value x between two neighbours lo < hi of the target dtype is rounded to hi
with probability (x - lo) / (hi - lo) and to lo otherwise, so its expected
value is x (unbiased). Many small increments then move a low-precision number
on average, where round-to-nearest would drop each of them.

The random numbers are a hash, not a generator with state: the uniform for an
entry is a function of (seed, step count, stream, leaf, row, column) only. The
row is the entry's index along the leading axis (a table row's id, for a
`RowSparse` leaf's touched rows) and the column its flat index in the rest, so
a table's row gets the same numbers whether the table is trained densely or
row by row, on one device or sharded: the same seed and step round alike.

The hash is Murmur3's 32-bit finalizer (``fmix32``): the key words and the
row are mixed once per row, and each entry mixes its row's hash plus its
column times the golden ratio (one finalizer per entry, which keeps the
rounding cheap next to the step). It is not cryptographic; it only needs
numbers that look independent across entries and steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from adagrad_jax._src.core.numerics import LOW_PRECISION

# The streams of one step: the weights, then each state slot.
WEIGHTS = 0


class RoundingKey(NamedTuple):
    """The seed and the step count that key a step's random numbers (uint32 scalars),
    and whether the step rounds its new weights too (then the rules compute the
    updates of low-precision parameters in float32)."""

    seed: jax.Array
    count: jax.Array  # type: ignore[assignment]  # (shadows tuple.count, as in optax)
    weights: bool = True


def _u32(x: Any) -> jax.Array:
    return jnp.asarray(x).astype(jnp.uint32)


def fmix32(h: jax.Array) -> jax.Array:
    """Murmur3's 32-bit finalizer: each input bit flips each output bit with probability ~1/2."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def random_bits(
    key: RoundingKey, stream: int, leaf: int, rows: jax.Array | None, shape
) -> jax.Array:
    """uint32 random bits for an array of `shape`, keyed by position.

    Args:
      key: the seed and step count.
      stream: which quantity of the step is rounded (`WEIGHTS`, or 1 + a slot's index).
      leaf: the leaf's index in the flattened parameter tree.
      rows: the row id of each entry along axis 0 (shape ``shape[:1]``), or None
        for a whole leaf (rows 0, 1, ...). A scalar has row 0.
      shape: the shape of the array to round.
    """
    shape = tuple(shape)
    base = fmix32(_u32(key.seed) ^ fmix32(_u32(key.count) + jnp.uint32(0x9E3779B9)))
    base = fmix32(base ^ jnp.uint32((stream * 0x632BE5AB + leaf * 0x85157AF5) & 0xFFFFFFFF))
    if not shape:
        return fmix32(fmix32(base))
    if rows is None:
        rows = lax.iota(jnp.int32, shape[0])
    row_hash = fmix32(base ^ fmix32(_u32(rows) * jnp.uint32(0x27D4EB2F) + jnp.uint32(1)))
    width = 1
    for d in shape[1:]:
        width *= d
    # One finalizer per entry: the row's hash plus the column times the golden
    # ratio (a Weyl sequence, as in SplitMix), then mixed.
    cols = lax.iota(jnp.uint32, width).reshape((1, *shape[1:]))
    row_hash = row_hash.reshape(shape[:1] + (1,) * (len(shape) - 1))
    return fmix32(row_hash + cols * jnp.uint32(0x9E3779B9))


def stochastic_round(x: jax.Array, dtype: Any, bits: jax.Array) -> jax.Array:
    """`x` rounded to `dtype` up with probability (x - lo) / (hi - lo), given random uint32 `bits`.

    `x` is float32 (or wider); `dtype` bfloat16 or float16 (any other dtype is
    a plain cast). Values the dtype holds exactly stay as they are; infinities
    and NaN are cast as they are. bfloat16 keeps float32's top 16 bits: the low
    16 bits of x plus 16 random bits carry into them with exactly that
    probability (a value within a spacing of the largest finite number may
    carry to infinity). float16 picks between its two neighbours.
    """
    dtype = jnp.dtype(dtype)
    if dtype not in LOW_PRECISION:
        return x.astype(dtype)
    x = x.astype(jnp.float32)
    if dtype == jnp.dtype(jnp.bfloat16):
        raw = jax.lax.bitcast_convert_type(x, jnp.uint32)
        kept = (raw + (bits >> 16)) & jnp.uint32(0xFFFF0000)
        # Chosen on float32 bits, then one cast (exact for a kept value): a select
        # on bfloat16 values costs XLA:CPU two more casts per entry.
        kept = jnp.where(jnp.isfinite(x), kept, raw)
        return jax.lax.bitcast_convert_type(kept, jnp.float32).astype(dtype)
    u = (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)
    nearest = x.astype(dtype)
    near = nearest.astype(jnp.float32)
    toward = jnp.where(near < x, jnp.inf, -jnp.inf).astype(dtype)
    other = jnp.nextafter(nearest, toward)
    far = other.astype(jnp.float32)
    lo = jnp.minimum(near, far)
    hi = jnp.maximum(near, far)
    gap = hi - lo
    p_up = jnp.where(gap > 0, (x - lo) / jnp.where(gap > 0, gap, 1.0), 0.0)
    rounded = jnp.where(u < p_up, hi, lo).astype(dtype)
    exact_or_special = (near == x) | ~jnp.isfinite(near) | ~jnp.isfinite(far)
    return jnp.where(exact_or_special, nearest, rounded)


class Rounder:
    """Rounds the arrays of one leaf (or of one table's touched rows) for a rule.

    The row engine gives one to a rule that rounds its state
    (`tables/engine.py:map_rule` with ``rounding=``): ``rounder.round(x, dtype,
    slot)`` is `stochastic_round` keyed by the step, the leaf, the rows and the
    slot's stream.
    """

    def __init__(self, key: RoundingKey, leaf: int, rows: jax.Array | None):
        self.key = key
        self.leaf = leaf
        self.rows = rows

    def bits(self, shape: tuple[int, ...], slot: int = 0) -> jax.Array:
        """The random bits of the slot's entries (an 8-bit accumulator's requantization)."""
        return random_bits(self.key, 1 + slot, self.leaf, self.rows, shape)

    def round(self, x: jax.Array, dtype: Any, slot: int = 0) -> jax.Array:
        if jnp.dtype(dtype) not in LOW_PRECISION:
            return x.astype(dtype)
        bits = random_bits(self.key, 1 + slot, self.leaf, self.rows, jnp.shape(x))
        return stochastic_round(x, dtype, bits)


def update_dtype(rounder: Rounder | None, g: jax.Array) -> Any:
    """The dtype a rule computes its update in: float32 for a low-precision `g` under
    stochastic rounding (the rounding of the new weight then sees the exact
    float32 step), `g`'s dtype otherwise."""
    if rounder is not None and rounder.key.weights and jnp.dtype(g.dtype) in LOW_PRECISION:
        return jnp.dtype(jnp.float32)
    return g.dtype


def rounds(rounder: Rounder | None, x: jax.Array) -> bool:
    """Whether `round_sum` rounds sums into `x` stochastically (a low-precision `x`)."""
    return rounder is not None and jnp.dtype(x.dtype) in LOW_PRECISION


def round_sum(rounder: Rounder | None, a: jax.Array, b: jax.Array, slot: int = 0) -> jax.Array:
    """a + b in `a`'s dtype: rounded to nearest, or stochastically with a `rounder`.

    With a rounder and a bfloat16 or float16 `a`, the sum is taken in float32
    and rounded once, stochastically.
    """
    if rounder is None or not rounds(rounder, a):
        return a + b
    return rounder.round(a.astype(jnp.float32) + b.astype(jnp.float32), a.dtype, slot)
