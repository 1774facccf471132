"""Shared machinery of the family beyond the diagonal (`full_matrix`, `shampoo`, `adagrad_norm`).

- `statistics_dtype`: the dtype of a matrix statistic for a parameter dtype;
- `shape_argument`: an integer argument that fixes the state's shapes, as a Python int;
- `inverse_root`: the pseudo-inverse root of a batch of symmetric PSD matrices, by eigh;
- `refresh_due`: whether a step recomputes the cached preconditioners.

How a leaf is cut into blocks lives in `blocks`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adagrad_jax._src.core import checks, slots, trees

HIGHEST = jax.lax.Precision.HIGHEST


def statistics_dtype(caller: str, path: Any, dtype: Any) -> jnp.dtype:
    """float64 for float64 parameters, float32 for every other float dtype.

    bfloat16 and float16 sums of outer products stall and overflow as sums of
    squares do (see `accumulator_dtype_for`), and LAPACK has no eigensolver
    below float32.

    Raises:
      TypeError: for integer, boolean or complex parameters, naming the path.
    """
    trees.check_param_dtype(caller, path, dtype)
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(
            f"{caller}: parameter {jax.tree_util.keystr(path) or '<root>'} has dtype {dtype.name};"
            f" {caller} is defined for real parameters only (its statistics are real symmetric"
            " matrices). Split the leaf into real and imaginary parts, or give it"
            " adagrad_jax.adagrad through optax.multi_transform."
        )
    return jnp.dtype(jnp.float64) if dtype == jnp.float64 else jnp.dtype(jnp.float32)


def shape_argument(caller: str, arg: str, value: Any) -> int:
    """`value` as a Python int >= 1, for an argument that fixes the state's shapes.

    `optax.inject_hyperparams` turns every integer argument into a JAX array.
    A concrete one is read here; a traced one (``jax.jit(tx.init)``) cannot
    be, because the state's shapes depend on it.
    """
    if checks.is_traced(value):
        raise TypeError(
            f"{caller}({arg}={value!r}): {arg} fixes the shapes of the optimizer state and"
            f" cannot be traced. Under optax.inject_hyperparams pass"
            f" static_args=({arg!r},), or call init outside jax.jit."
        )
    number = checks.check_integer(caller, arg, value, low=1)
    assert number is not None
    return number


def placed_count(params: Any) -> jax.Array:
    """An int32 step counter at 0, placed (replicated) like the first parameter leaf.

    Placed like the other state arrays, so that the state returned by a
    jitted update (committed to its devices) has the same placement as the
    one `init` returned, and the second call does not compile again.
    """
    leaves = jax.tree.leaves(params)
    if not leaves:
        return jnp.zeros([], jnp.int32)
    first = leaves[0] if hasattr(leaves[0], "shape") else jnp.asarray(leaves[0])
    return slots.placed_full(first, (), 0, jnp.int32, replicate=True)


def _root(x: jax.Array, root: int) -> jax.Array:
    if root == 2:
        return jnp.sqrt(x)
    if root == 4:
        return jnp.sqrt(jnp.sqrt(x))
    return jnp.power(x, 1.0 / root)


def inverse_root(
    stats: jax.Array, *, root: int, eps_root: Any, eps: Any
) -> tuple[jax.Array, jax.Array]:
    """phi(S) for a batch of symmetric PSD matrices S, and which of them were finite.

    With S = Q diag(lambda) Q^T (`jnp.linalg.eigh`)::

        phi(S)      = Q diag(phi(lambda_i)) Q^T
        phi(lambda) = 1 / ((lambda + eps_root)^(1/root) + eps)   if lambda > cutoff
                    = 0                                          otherwise
        cutoff      = max(lambda_max * b * finfo(dtype).eps, finfo(dtype).tiny)

    for b x b matrices. The cutoff is NumPy's `matrix_rank` tolerance: an
    eigenvalue below it cannot be told from 0 in the statistic's precision,
    and its eigenvector is then noise of the eigensolver. Such directions
    (and exact zeros: directions no gradient has touched) get no step, the
    pseudo-inverse, instead of 1 / eps, which for a small eps would multiply
    rounding noise by 1e8. In exact arithmetic this changes nothing for a
    preconditioner computed from a statistic that contains the current
    gradient (g g^T <= G, so g has no component in G's null space).

    Args:
      stats: (..., b, b) symmetric matrices, float32 or float64.
      root: the root taken, 2 for full-matrix Adagrad, 2k for Shampoo.
      eps_root: added to each eigenvalue inside the root (>= 0).
      eps: added outside the root (>= 0).

    Returns:
      (phi(S), finite): phi(S) with the shape of `stats` (0 for a matrix that
      is not finite) and a (...,) boolean array that is False where `stats`
      held an inf or NaN.
    """
    dtype = stats.dtype
    b = stats.shape[-1]
    finite = jnp.all(jnp.isfinite(stats), axis=(-2, -1))
    safe = jnp.where(finite[..., None, None], stats, jnp.zeros((), dtype))
    finfo = jnp.finfo(dtype)
    if b == 1:  # A 1 x 1 matrix is its own eigenvalue.
        lam, q = safe[..., 0], None
    else:
        lam, q = jnp.linalg.eigh(safe)
    lam_max = jnp.max(lam, axis=-1, keepdims=True)
    cutoff = jnp.maximum(
        lam_max * jnp.asarray(b * float(finfo.eps), dtype), jnp.asarray(finfo.tiny, dtype)
    )
    keep = lam > cutoff
    base = jnp.where(keep, lam, jnp.ones((), dtype)) + jnp.asarray(eps_root, dtype)
    denom = _root(base, root) + jnp.asarray(eps, dtype)
    phi = jnp.where(keep, 1 / denom, jnp.zeros((), dtype))
    if q is None:
        out = phi[..., None]
    else:
        out = jnp.einsum("...ij,...j,...kj->...ik", q, phi, q, precision=HIGHEST)
    return out, finite


def refresh(
    previous: list[jax.Array], stats: list[jax.Array], roots: list[int], *, eps_root: Any, eps: Any
) -> list[jax.Array]:
    """`inverse_root` of each stack in `stats`, keeping `previous` where one is not finite.

    Stacks with the same block size, dtype and root are concatenated into one
    batched eigendecomposition: one solver call (and one compiled kernel) for
    all the leaves that share a block size, instead of one per leaf.
    """
    groups: dict[tuple[int, Any, int], list[int]] = {}
    for i, (s, r) in enumerate(zip(stats, roots)):
        groups.setdefault((s.shape[-1], s.dtype, r), []).append(i)
    out: list[Any] = [None] * len(stats)
    for (_, _, root), members in groups.items():
        batch = (
            jnp.concatenate([stats[i] for i in members]) if len(members) > 1 else stats[members[0]]
        )
        new, finite = inverse_root(batch, root=root, eps_root=eps_root, eps=eps)
        offset = 0
        for i in members:
            n = stats[i].shape[0]
            part = jax.lax.slice_in_dim(new, offset, offset + n)
            ok = jax.lax.slice_in_dim(finite, offset, offset + n)
            out[i] = jnp.where(ok[:, None, None], part, previous[i])
            offset += n
    return out


def refresh_due(count: jax.Array, every: Any, start: Any = 1) -> Any:
    """Whether step t = count + 1 recomputes the preconditioners.

    Due when t >= start and (t - start) is a multiple of `every`. Python True
    when every step is due (every = start = 1, as Python numbers), so that
    no `lax.cond` is compiled; a traced boolean otherwise.
    """
    if is_python_one(every) and is_python_one(start):
        return True
    t = count.astype(jnp.int32) + 1
    every = jnp.asarray(every).astype(jnp.int32)
    start = jnp.asarray(start).astype(jnp.int32)
    return (t >= start) & (jnp.remainder(t - start, jnp.maximum(every, 1)) == 0)


def is_python_one(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value == 1
