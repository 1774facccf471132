"""The arithmetic every optimizer shares.

* `guarded_divide`: the one zero guard: a / d where d is a normal number, a
  fallback elsewhere, compiled out when a Python constant keeps d normal.
* `adagrad_direction`: g / (sqrt(G + eps_root) + eps) (diagonal Adagrad, Shampoo,
  AdaGrad-Norm); `adagrad_step_size`: lr / (sqrt(G + eps_root) + eps) (the
  regularized family). Both guard the denominator with `guarded_divide`.
* `squared_magnitude`, `accumulator_dtype_for`: |g|^2 and the dtype it is summed in.
* `soft_threshold`: the proximal map of t * |w| (L1), with exact zeros.
* `learning_rate_at`: a constant or an optax schedule, at the step count.
* `row_mean`, `per_row`: the row-wise accumulator of tables.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.core import checks


def soft_threshold(v: jax.Array, t: jax.Array) -> jax.Array:
    """sign(v) * max(|v| - t, 0), exactly 0.0 (not -0.0 or 1e-9) where |v| <= t.

    >>> import jax.numpy as jnp
    >>> soft_threshold(jnp.array([3.0, -0.5, 0.5, -2.0]), 1.0)
    Array([ 2.,  0.,  0., -1.], dtype=float32)
    """
    return jnp.where(jnp.abs(v) > t, v - jnp.sign(v) * t, jnp.zeros((), v.dtype))


def guarded_divide(
    numerator: jax.Array,
    denominator: jax.Array,
    *,
    keeps_normal: tuple[Any, ...] = (),
    fallback: Any = None,
) -> jax.Array:
    """numerator / denominator where the denominator is a normal number; `fallback` elsewhere.

    The one zero guard of the package. "Normal" means at least the smallest
    normal number of the denominator's dtype (`finfo.tiny`: 1.2e-38 in
    float32), not merely > 0: XLA backends flush subnormal numbers to zero,
    and one that flushes them in the division but not in the comparison would
    otherwise divide by a flushed 0 (0 / 0 = NaN, x / 0 = inf). The division
    is done in the numerator's dtype (the denominator is cast to it, after
    the comparison); `fallback` (default 0) must broadcast to the result.

    `keeps_normal` lists the Python constants any one of which, when it is a
    normal positive number in the denominator's dtype, keeps every
    denominator normal (the caller knows which: tau, since the accumulator
    starts at tau and never decreases; eps, added outside the root; ...). The
    guard is then compiled out: a plain division. JAX values among them (traced
    under `optax.inject_hyperparams`) never compile it out.

    >>> import jax.numpy as jnp
    >>> guarded_divide(jnp.array([1.0, 0.0, 2.0]), jnp.array([2.0, 0.0, 1e-40]))
    Array([0.5, 0. , 0. ], dtype=float32)
    """
    dtype = denominator.dtype
    if any(checks.is_positive_in(v, dtype) for v in keeps_normal):
        return numerator / denominator.astype(numerator.dtype)
    normal = denominator >= jnp.asarray(jnp.finfo(dtype).tiny, dtype)
    safe = jnp.where(normal, denominator, jnp.ones_like(denominator))
    out = numerator / safe.astype(numerator.dtype)
    if fallback is None:
        fallback = jnp.zeros((), out.dtype)
    return jnp.where(normal, out, fallback)


def adagrad_step_size(lr: Any, s: jax.Array, eps: Any, eps_root: Any, *, tau: Any) -> jax.Array:
    """a = lr / (sqrt(s + eps_root) + eps) in the dtype of `s`; a = 0 where the root is 0.

    The root is 0 (or subnormal, which XLA flushes to 0) only while every
    gradient so far was 0 and tau, eps and eps_root are each 0 or subnormal
    in the accumulator's dtype; `guarded_divide` gives 0 there, and its guard
    is compiled out when a Python constant among them is a normal number.
    """
    dtype = s.dtype
    denom = jnp.sqrt(s + jnp.asarray(eps_root, dtype)) + jnp.asarray(eps, dtype)
    lr = jnp.asarray(lr).astype(dtype)
    return guarded_divide(lr, denom, keeps_normal=(tau, eps, eps_root))


def learning_rate_at(learning_rate: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """The learning rate of the step whose count (0 at the first step) is `count`."""
    return learning_rate(count) if callable(learning_rate) else jnp.asarray(learning_rate)


LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def accumulator_dtype_for(param_dtype: Any, accumulator_dtype: Any = None) -> jnp.dtype:
    """The dtype of the sum of squares kept for a parameter of `param_dtype`.

    An explicit `accumulator_dtype` wins. Otherwise bfloat16 and float16
    parameters get a float32 accumulator (a bfloat16 sum of ones stops growing
    at 256 and float16 squares overflow above 256), complex parameters get the
    real dtype of their precision, and every other dtype keeps its own.

    >>> import jax.numpy as jnp
    >>> accumulator_dtype_for(jnp.bfloat16).name
    'float32'
    >>> accumulator_dtype_for(jnp.complex64).name
    'float32'
    """
    if accumulator_dtype is not None:
        return jnp.dtype(accumulator_dtype)
    dtype = jnp.dtype(param_dtype)
    if dtype in LOW_PRECISION:
        return jnp.dtype(jnp.float32)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.finfo(dtype).dtype  # complex64 -> float32, complex128 -> float64
    return dtype


def squared_magnitude(g: jax.Array, dtype: Any) -> jax.Array:
    """|g|^2 computed in `dtype` (re^2 + im^2 for complex `g`).

    The cast comes first, so float16 gradients above 256 do not overflow.
    """
    if jnp.iscomplexobj(g):
        re = jnp.real(g).astype(dtype)
        im = jnp.imag(g).astype(dtype)
        return re * re + im * im
    g = g.astype(dtype)
    return g * g


def adagrad_direction(
    g: jax.Array, sum_of_squares: jax.Array, eps: Any, eps_root: Any, *, tau: Any
) -> jax.Array:
    """g / (sqrt(sum_of_squares + eps_root) + eps), in the gradient's dtype.

    The denominator is formed in the accumulator's dtype; the division in the
    wider of the gradient's and the accumulator's dtype. A denominator below
    the smallest normal number of the accumulator's dtype (only while every
    gradient so far was 0 and tau = `tau`, eps and eps_root are each 0 or
    subnormal in that dtype, which XLA flushes to 0) gives an update of
    exactly 0 instead of 0/0 = NaN. The guard is compiled in unless a Python
    constant among tau, eps and eps_root is a normal positive number in that
    dtype (1e-8 is in float32 but rounds to 0 in float16; 1e-40 is subnormal
    in float32): each one alone then keeps the denominator normal, since the
    accumulator starts at tau and never decreases.
    """
    acc_dtype = sum_of_squares.dtype
    with jax.numpy_dtype_promotion("standard"):  # A dtype query, not a mix.
        compute_dtype = jnp.promote_types(g.dtype, acc_dtype)
    denom = jnp.sqrt(sum_of_squares + jnp.asarray(eps_root, acc_dtype))
    denom = denom + jnp.asarray(eps, acc_dtype)
    out = guarded_divide(g.astype(compute_dtype), denom, keeps_normal=(tau, eps, eps_root))
    return out.astype(g.dtype)


def row_mean(sq: jax.Array) -> jax.Array:
    """Mean over every axis but the first (the row axis); rows of 1-D leaves are scalars."""
    if sq.ndim <= 1:
        return sq
    return jnp.mean(sq, axis=tuple(range(1, sq.ndim)))


def per_row(acc: jax.Array, ndim: int) -> jax.Array:
    """(k,) -> (k, 1, ..., 1) so that one accumulator entry scales a whole row."""
    return acc.reshape(acc.shape + (1,) * (ndim - acc.ndim))
