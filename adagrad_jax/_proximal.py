"""Pieces shared by the regularized family (proximal Adagrad, dual averaging, FTRL).

* `soft_threshold`: the proximal map of t * |w| (L1), with exact zeros.
* `adagrad_step_size`: lr / (sqrt(G + eps_root) + eps), 0 where the root is 0.
* `learning_rate_at`: a constant or an optax schedule, at the step count.
* `check_real_params`: the L1 and L2 terms have no complex meaning here.
* `check_nonnegative`, `check_bool`: arguments every regularized constructor takes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adagrad_jax import _validation


def soft_threshold(v: jax.Array, t: jax.Array) -> jax.Array:
    """sign(v) * max(|v| - t, 0), exactly 0.0 (not -0.0 or 1e-9) where |v| <= t.

    >>> import jax.numpy as jnp
    >>> soft_threshold(jnp.array([3.0, -0.5, 0.5, -2.0]), 1.0)
    Array([ 2.,  0.,  0., -1.], dtype=float32)
    """
    return jnp.where(jnp.abs(v) > t, v - jnp.sign(v) * t, jnp.zeros((), v.dtype))


def adagrad_step_size(lr: Any, s: jax.Array, eps: Any, eps_root: Any, *, tau: Any) -> jax.Array:
    """a = lr / (sqrt(s + eps_root) + eps) in the dtype of `s`; a = 0 where the root is 0.

    The root is 0 only while every gradient so far was 0 and tau, eps and
    eps_root are all 0 (in the accumulator's dtype); the guard is compiled in
    unless a Python constant among them keeps it positive.
    """
    dtype = s.dtype
    denom = jnp.sqrt(s + jnp.asarray(eps_root, dtype)) + jnp.asarray(eps, dtype)
    lr = jnp.asarray(lr).astype(dtype)
    if any(_validation.is_positive_in(v, dtype) for v in (tau, eps, eps_root)):
        return lr / denom
    positive = denom > 0
    return jnp.where(positive, lr / jnp.where(positive, denom, 1), jnp.zeros((), dtype))


def learning_rate_at(learning_rate: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """The learning rate of the step whose count (0 at the first step) is `count`."""
    return learning_rate(count) if callable(learning_rate) else jnp.asarray(learning_rate)


def check_real_params(fn: str, params: Any) -> None:
    """TypeError for complex parameter leaves, naming the leaf's path."""
    for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = jnp.dtype(p.dtype if hasattr(p, "dtype") else jnp.result_type(p))
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                f"{fn}: parameter {jax.tree_util.keystr(path) or '<root>'} is"
                f" {dtype.name}; the L1 and L2 terms of {fn} are defined"
                " for real parameters only. Train complex leaves with"
                " adagrad_jax.adagrad (split the tree with optax.multi_transform)."
            )


def init_count() -> jax.Array:
    return jnp.zeros([], jnp.int32)


def check_bool(fn: str, arg: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}({arg}={value!r}): {arg} must be True or False.")


def check_nonnegative(fn: str, **values: Any) -> None:
    """check_number for each keyword: finite and >= 0 (JAX values unchecked)."""
    for arg, value in values.items():
        _validation.check_number(fn, arg, value)
