"""8-bit accumulators (``accumulator_dtype="int8"``): a logarithmic code with a scale per block.

An accumulator G >= 0 of shape S (rank >= 2: vectors and scalars, small next
to the matrices and tables, keep a float32 accumulator) is stored as
``codes`` (uint8, shape S) and
``scales`` (float32, one per block of `BLOCK` consecutive entries of the last
axis, or of the whole last axis when it is shorter: shape
``S[:-1] + (ceil(S[-1] / BLOCK),)``)::

    G = scale * 2 ** (-code / LEVELS_PER_OCTAVE)     code = 0, 1, ..., 254
    G = 0                                            code = 255

with ``scale`` the largest G of the block. So a block holds values from its
maximum down to 2**-31.75 (3.3e-10) of it, 8 codes per octave (each 9% above
the next). Adagrad's sums are positive, only grow and span many orders of
magnitude across coordinates; a logarithmic code keeps every coordinate's
*relative* precision, where a linear one (codes proportional to G) rounds the
small sums of a block to 0 and gives their coordinates steps as large as the
learning rate (measured in the closing note of issue 19).

Each step dequantizes, adds, and quantizes again with stochastic rounding
between the two nearest codes, unbiased in G (`core/rounding.py`'s uniforms,
keyed by the entry's position): round-to-nearest would drop any square under
half a code's step (4.5% of G), which stalls a sum of small squares at once.
The rounding noise is the price: it is zero-mean, and a sum's relative error
stays near sqrt(step / 2) of G (~ 10% of a step size), whatever the number of
steps. Blocks lie within rows (the last axis), so a table's touched rows are
requantized alone.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

BLOCK = 64
LEVELS_PER_OCTAVE = 8.0
ZERO_CODE = 255
SMALLEST = 2.0 ** (-254 / LEVELS_PER_OCTAVE)  # the smallest nonzero level, times the scale
INT8 = "int8"


class Int8Accumulator(NamedTuple):
    """An 8-bit accumulator: ``codes`` (uint8, the parameter's shape) and ``scales``
    (float32, the largest value of each block of `BLOCK` entries of the last axis).

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
    return x.reshape(*x.shape[:-1], -1, size)


def _unblocked(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    x = x.reshape(*x.shape[:-2], -1)
    if not shape:
        return x[0]
    return x[..., : shape[-1]]


def dequantize(acc: Int8Accumulator) -> jax.Array:
    """The float32 values of `acc`."""
    codes = _blocked(acc.codes.astype(jnp.float32))
    levels = jnp.exp2(-codes / LEVELS_PER_OCTAVE) * acc.scales[..., None]
    values = jnp.where(codes == ZERO_CODE, 0.0, levels)
    return _unblocked(values, acc.shape)


def quantize(values: jax.Array, u: jax.Array | None) -> Int8Accumulator:
    """`values` (>= 0) coded per block; rounded up or down with uniforms `u` (same
    shape; None: to nearest in the logarithm, for constants such as tau at init).

    Between the two codes around a value v, lo < v < hi, it takes hi with
    probability (v - lo) / (hi - lo): the expected decoded value is v. Below
    the smallest level (SMALLEST * scale) the two neighbours are 0 and that
    level.
    """
    shape = tuple(values.shape)
    v = _blocked(values.astype(jnp.float32))
    scales = jnp.max(v, axis=-1)
    safe = jnp.where(scales > 0, scales, 1.0)[..., None]
    ratio = jnp.clip(v / safe, 0.0, 1.0)
    position = -jnp.log2(jnp.maximum(ratio, 1e-38)) * LEVELS_PER_OCTAVE  # 0 at the max
    below = jnp.floor(position)  # the code of the level just above (larger value)
    upper = jnp.exp2(-below / LEVELS_PER_OCTAVE)
    lower = jnp.where(below >= 254, 0.0, jnp.exp2(-(below + 1) / LEVELS_PER_OCTAVE))
    upper = jnp.where(below >= 254, SMALLEST, upper)
    if u is None:
        take_upper = position - below < 0.5
    else:
        p_upper = jnp.where(upper > lower, (ratio - lower) / (upper - lower), 1.0)
        take_upper = _blocked(u) < p_upper
    code_upper = jnp.minimum(below, 254.0)
    code_lower = jnp.where(below >= 254, float(ZERO_CODE), below + 1)
    codes = jnp.where(take_upper, code_upper, code_lower)
    codes = jnp.where(ratio <= 0, float(ZERO_CODE), codes)
    return Int8Accumulator(_unblocked(codes, shape).astype(jnp.uint8), scales)


def full(shape: tuple[int, ...], value: Any) -> Int8Accumulator:
    """An accumulator of `shape` holding `value` everywhere (exact: code 0 at scale `value`)."""
    value = jnp.asarray(value, jnp.float32)
    code = jnp.where(value > 0, 0, ZERO_CODE).astype(jnp.uint8)
    return Int8Accumulator(
        jnp.full(shape, code, jnp.uint8), jnp.full(scales_shape(shape), value, jnp.float32)
    )
