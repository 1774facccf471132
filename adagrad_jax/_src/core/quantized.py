"""8-bit accumulators (``accumulator_dtype="int8"``): a float-like code with a scale per block.

An accumulator G >= 0 of shape S (rank >= 2: vectors and scalars, small next
to the matrices and tables, keep a float32 accumulator) is stored as
``codes`` (uint8, shape S) and ``scales`` (float32, a bound on the G of each
block of `BLOCK` consecutive entries of the last axis, or of the whole last
axis when it is shorter: shape ``S[:-1] + (ceil(S[-1] / BLOCK),)``)::

    G = scale * r,   r = 2**(-e) * (1 + m / 8)    (code = 8 * e + 7 - m ... see below)
    G = 0                                         code = 255

r = G / scale in (0, 1] is kept to 3 mantissa bits over 32 octaves: the code
counts down from 1.0 in steps of one eighth of an octave's width (the float32
bits of r, shifted right by 20, below those of 1.0), so a block holds values
from its maximum down to 2**-32 of it, each level 6.7-12.5% above the next.
Encoding and decoding are integer operations on float32 bits (no logarithm).
Adagrad's sums are positive, only grow and span many orders of magnitude
across coordinates: a code with a floating point keeps every coordinate's
*relative* precision, where a linear one (codes proportional to G) rounds the
small sums of a block to 0 (measured in the closing note of issue 19).

A block's scale starts at its largest value and grows each step by the
block's largest square (`add_squares`), so that one pass decodes, adds,
steps and encodes. Each step encodes again with stochastic rounding of the
mantissa, unbiased in G (the low 20 bits of r plus 20 random bits, carried;
`core/rounding.py`'s hash, keyed by the entry's position): round-to-nearest
would drop any square under half a level, which stalls a sum of small squares
at once. The rounding noise is the price: zero-mean, and a sum's relative
error stays near sqrt(level / 2) of G (about 10% of a step size), whatever the
number of steps. Blocks lie within rows (the last axis), so a table's touched
rows are encoded alone.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from adagrad_jax._src.core.numerics import squared_magnitude

BLOCK = 64
ZERO_CODE = 255
_ONE = 127 << 3  # the float32 bits of 1.0, shifted right by 20: r = 1.0 is code 0
INT8 = "int8"


class Int8Accumulator(NamedTuple):
    """An 8-bit accumulator: ``codes`` (uint8, the parameter's shape) and ``scales``
    (float32, a bound on the values of each block of `BLOCK` entries of the last axis).

    `adagrad_jax.accumulators` returns it dequantized (float32).
    """

    codes: jax.Array
    scales: jax.Array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @property
    def ndim(self) -> int:
        return len(self.codes.shape)

    @property
    def dtype(self) -> Any:
        """The dtype the accumulator is computed in: float32."""
        return jnp.dtype(jnp.float32)


def is_int8(x: Any) -> bool:
    """Whether `x` is an 8-bit accumulator (a state leaf)."""
    return isinstance(x, Int8Accumulator)


def is_int8_dtype(accumulator_dtype: Any) -> bool:
    """Whether a checked ``accumulator_dtype`` asks for 8-bit accumulators."""
    return isinstance(accumulator_dtype, str) and accumulator_dtype == INT8


def _block_size(shape: tuple[int, ...]) -> int:
    return max(min(BLOCK, shape[-1]), 1) if shape else 1


def num_blocks(shape: tuple[int, ...]) -> int:
    return -(-shape[-1] // _block_size(shape)) if shape else 1


def scales_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (*shape[:-1], num_blocks(shape)) if shape else (1,)


def _blocked(x: jax.Array) -> jax.Array:
    """`x` (shape S) as (..., blocks, block size), the last block padded with zeros."""
    if x.ndim == 0:
        x = x.reshape(1)
    size = _block_size(x.shape)
    pad = num_blocks(x.shape) * size - x.shape[-1]
    if pad:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    return x.reshape(*x.shape[:-1], num_blocks(x.shape), size)  # (no -1: a leaf may be empty)


def _unblocked(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    x = x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])
    if not shape:
        return x[0]
    return x[..., : shape[-1]]


def dequantize(acc: Int8Accumulator) -> jax.Array:
    """The float32 values of `acc`."""
    codes = _blocked(acc.codes.astype(jnp.uint32))
    bits = (jnp.uint32(_ONE) - jnp.minimum(codes, jnp.uint32(254))) << 20
    r = jax.lax.bitcast_convert_type(bits, jnp.float32)
    values = jnp.where(codes == ZERO_CODE, 0.0, r * acc.scales[..., None])
    return _unblocked(values, acc.shape)


def quantize(
    values: jax.Array, bits: jax.Array | None, scales: jax.Array | None = None
) -> Int8Accumulator:
    """`values` (>= 0) coded per block; the mantissa rounded with random uint32 `bits`
    (same shape; None: to nearest, for constants such as tau at init).

    `scales` (shape ``scales_shape(values.shape)``) must bound each block's values
    from above; None takes each block's maximum (a pass over `values`).
    r = v / scale is rounded to 3 mantissa bits: up with probability equal to its
    position between the two levels around it (the expected decoded value is v).
    Values below 2**-32 of their block's scale are coded as 0.
    """
    shape = tuple(values.shape)
    v = _blocked(values.astype(jnp.float32))
    if scales is None:
        scales = jnp.max(v, axis=-1)
    inverse = jnp.where(scales > 0, 1.0 / jnp.where(scales > 0, scales, 1.0), 0.0)
    r = jnp.minimum(v * inverse[..., None], 1.0)  # in [0, 1]
    raw = jax.lax.bitcast_convert_type(r, jnp.uint32)
    carry = jnp.uint32(1 << 19) if bits is None else _blocked(bits) >> 12  # 20 bits
    q = (raw + carry) >> 20  # at most _ONE: r <= 1
    # Levels below the 255th (and r = 0, whose q is 0) are the zero code.
    codes = jnp.minimum(jnp.uint32(_ONE) - q, jnp.uint32(ZERO_CODE))
    return Int8Accumulator(_unblocked(codes, shape).astype(jnp.uint8), scales)


def _block_abs_max(x: jax.Array) -> jax.Array:
    """The largest |x| of each block, in float32 (max and min of `x` itself: a reduction
    of a computed value such as x * x is several times slower on XLA:CPU)."""
    blocks = _blocked(x)
    return jnp.maximum(jnp.max(blocks, axis=-1), -jnp.min(blocks, axis=-1)).astype(jnp.float32)


def add_squares(
    acc: Int8Accumulator,
    g: jax.Array,
    bits: jax.Array,
    *,
    decay: jax.Array | None = None,
    weight: jax.Array | None = None,
) -> tuple[jax.Array, Int8Accumulator]:
    """Adagrad's sum: ``(total, coded)`` where total = decay * dequantize(acc) + weight *
    |g|^2 in float32 (decay and weight: float32 scalars, None for 1: a plain sum) and
    `coded` is total requantized stochastically with random uint32 `bits`.

    The new scale of a block is decay * its old scale plus weight * the block's
    largest |g|^2 (for complex g, the largest re^2 plus the largest im^2): a
    bound on the new values that needs no pass over them before encoding, so
    that decoding, adding, stepping and encoding share one pass (2.2x faster
    than a block maximum of the new values, measured on a 4096 x 4096 leaf). A
    scale so found exceeds its block's largest sum by at most a factor of the
    block's size (the squares added to one block's scale are at most all the
    block's squares), which costs at most 6 of the code's 32 octaves at the
    bottom; the relative precision of a value does not depend on its scale.
    """
    if jnp.iscomplexobj(g):
        re, im = jnp.real(g), jnp.imag(g)
        bound = _block_abs_max(re) ** 2 + _block_abs_max(im) ** 2
    else:
        bound = _block_abs_max(g) ** 2
    old, sq, scales = dequantize(acc), squared_magnitude(g, jnp.float32), acc.scales
    if decay is not None:
        old, scales = decay * old, decay * scales
    if weight is not None:
        sq, bound = weight * sq, weight * bound
    total = old + sq
    return total, quantize(total, bits, scales + bound)


def full(shape: tuple[int, ...], value: Any) -> Int8Accumulator:
    """An accumulator of `shape` holding `value` everywhere (exact: code 0 at scale `value`)."""
    value = jnp.asarray(value, jnp.float32)
    code = jnp.where(value > 0, 0, ZERO_CODE).astype(jnp.uint8)  # r = 1.0, or 0
    return Int8Accumulator(
        jnp.full(shape, code, jnp.uint8), jnp.full(scales_shape(shape), value, jnp.float32)
    )
