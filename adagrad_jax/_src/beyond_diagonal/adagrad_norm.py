"""AdaGrad-Norm: `ScaleByAdagradNormState`, `scale_by_adagrad_norm`, `adagrad_norm`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.core import checks, nonfinite_policy, slots, trees
from adagrad_jax._src.core.docs import shared_args
from adagrad_jax._src.core.numerics import (
    accumulator_dtype_for,
    adagrad_direction,
    squared_magnitude,
)
from adagrad_jax._src.tables.row_sparse import check_dense


class ScaleByAdagradNormState(NamedTuple):
    """State of `scale_by_adagrad_norm`.

    Attributes:
      sum_of_squares: b_t^2, the running sum of squared gradient norms
        (started at `initial_accumulator_value`). With ``per_leaf=True`` a
        tree like the parameters with one scalar per leaf (float32 for
        bfloat16/float16 parameters, the real dtype for complex ones, the
        parameter's dtype otherwise); with ``per_leaf=False`` one scalar for
        the whole tree, in the widest of those dtypes. Scalars are replicated
        over the parameter's mesh.
    """

    sum_of_squares: Any


def _leaf(p: Any) -> Any:
    return p if hasattr(p, "shape") else jnp.asarray(p)


@checks.checked_arguments
@shared_args
def scale_by_adagrad_norm(
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    *,
    eps: jax.typing.ArrayLike = 1e-8,
    per_leaf: bool = True,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    r"""Scales each gradient by one number: the root of the sum of all squared gradient norms.

    The AdaGrad-Norm preconditioner without the learning rate. At step
    t = 1, 2, ..., for each leaf (``per_leaf=True``) or for the whole tree
    at once (``per_leaf=False``)::

        b_0^2 = initial_accumulator_value                     (at init)
        b_t^2 = b_{t-1}^2 + ||g_t||^2                         (before use)
        u_t   = g_t / (b_t + eps)                             (eps outside the root)
        u_t   = 0  where  b_t + eps == 0                      (never NaN)

    ||g_t||^2 is the sum of |g|^2 over the leaf's (or the tree's)
    coordinates; for complex gradients |g|^2 = re^2 + im^2. The zero case
    only arises while every gradient so far was 0 and tau and eps are 0. The
    direction of the gradient is kept; only its length adapts, so the first
    step has length 1 in the leaf's (or the tree's) norm when tau = eps = 0.

    Args:
      {initial_accumulator_value}
        Here that sum is of squared gradient norms, b_0^2 in the paper. Must
        be >= 0. Default 0 (the paper needs b_0 > 0 only to avoid 0 / 0,
        which the guard handles).
      eps: added to b_t, outside the root (>= 0). Default 1e-8.
      per_leaf: one b per leaf (True) or one for the whole tree (False).
        Default True.
      {nonfinite}

    Returns:
      An `optax.GradientTransformation` whose state is
      `ScaleByAdagradNormState`.

    Raises:
      ValueError, TypeError: at construction, for an
        `initial_accumulator_value` or `eps` that is negative, not finite or
        not a number, or a `per_leaf` that is not a bool; at `init`, TypeError
        for integer or boolean parameters; at trace time, ValueError for
        gradients whose tree differs from the state's.

    Example:
      >>> import jax.numpy as jnp
      >>> import adagrad_jax
      >>> tx = adagrad_jax.scale_by_adagrad_norm(eps=0.0)
      >>> state = tx.init({"a": jnp.zeros(2), "b": jnp.zeros(())})
      >>> u, state = tx.update({"a": jnp.array([3.0, 4.0]), "b": jnp.array(0.0)}, state)
      >>> u["a"]          # g / ||g||: the zero leaf stays exactly 0
      Array([0.6, 0.8], dtype=float32)
      >>> u, state = tx.update({"a": jnp.array([0.0, 5.0]), "b": jnp.array(2.0)}, state)
      >>> u["a"], u["b"]  # 5 / sqrt(25 + 25) and 2 / sqrt(4)
      (Array([0.        , 0.70710677], dtype=float32), Array(1., dtype=float32))

    References:
      Ward, Wu and Bottou, "AdaGrad stepsizes: Sharp convergence over
      nonconvex landscapes", ICML 2019 (JMLR 21, 2020).
    """
    caller = "scale_by_adagrad_norm"
    nonfinite_policy.check(caller, nonfinite)
    return nonfinite_policy.wrap(
        caller,
        nonfinite,
        _adagrad_norm(caller, initial_accumulator_value, eps, per_leaf),
        skips_inside=False,
    )


def _adagrad_norm(caller, initial_accumulator_value, eps, per_leaf):
    checks.check_number(caller, "initial_accumulator_value", initial_accumulator_value)
    checks.check_number(caller, "eps", eps)
    per_leaf = checks.check_bool(caller, "per_leaf", per_leaf)
    tau = initial_accumulator_value

    def init_fn(params):
        def dtype_of(path, p):
            p = _leaf(p)
            trees.check_param_dtype(caller, path, p.dtype)
            return accumulator_dtype_for(p.dtype)

        dtypes = jax.tree_util.tree_map_with_path(dtype_of, params)
        if per_leaf:
            return ScaleByAdagradNormState(
                sum_of_squares=jax.tree.map(
                    lambda p, d: slots.placed_full(_leaf(p), (), tau, d, replicate=True),
                    params,
                    dtypes,
                )
            )
        leaves = jax.tree.leaves(dtypes)
        with jax.numpy_dtype_promotion("standard"):  # A dtype query, not a mix.
            dtype = jnp.result_type(*leaves) if leaves else jnp.dtype(jnp.float32)
        first = jax.tree.leaves(params)
        like = _leaf(first[0]) if first else jnp.zeros(())
        return ScaleByAdagradNormState(
            sum_of_squares=slots.placed_full(like, (), tau, dtype, replicate=True)
        )

    def direction(g, b2):
        return adagrad_direction(g, jnp.broadcast_to(b2, g.shape), eps, 0.0, tau=tau)

    def update_fn(updates, state, params=None):
        check_dense(caller, updates)
        if per_leaf:
            trees.check_same_structure(
                caller, "updates", updates, "state.sum_of_squares", state.sum_of_squares
            )
        updates = jax.tree.map(jnp.asarray, updates)
        if params is not None:  # The state holds scalars: params fix the leaf shapes.
            trees.check_same_shapes(caller, "updates", updates, "params", params)
        trees.check_inexact_leaves(caller, "updates", updates)
        if per_leaf:
            b2 = jax.tree.map(
                lambda g, s: s + jnp.sum(squared_magnitude(g, s.dtype)),
                updates,
                state.sum_of_squares,
            )
            new = jax.tree.map(direction, updates, b2)
            return new, ScaleByAdagradNormState(sum_of_squares=b2)
        s = state.sum_of_squares
        norms = [jnp.sum(squared_magnitude(g, s.dtype)) for g in jax.tree.leaves(updates)]
        b2 = s + sum(norms, jnp.zeros((), s.dtype))
        new = jax.tree.map(lambda g: direction(g, b2), updates)
        return new, ScaleByAdagradNormState(sum_of_squares=b2)

    return optax.GradientTransformation(init_fn, update_fn)


@checks.checked_arguments
@shared_args
def adagrad_norm(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    *,
    eps: jax.typing.ArrayLike = 1e-8,
    per_leaf: bool = True,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    r"""AdaGrad-Norm: one adaptive step size per leaf (or per model), from summed gradient norms.

    At step t = 1, 2, ... (count = t - 1), for each leaf (``per_leaf=True``)
    or for the whole tree at once (``per_leaf=False``)::

        b_0^2   = initial_accumulator_value                   (at init)
        b_t^2   = b_{t-1}^2 + ||g_t||^2                       (before use)
        u_t     = -lr(count) * g_t / (b_t + eps)
        u_t     = 0  where  b_t + eps == 0                    (never NaN)
        w_{t+1} = w_t + u_t

    Diagonal Adagrad keeps one sum per coordinate; AdaGrad-Norm keeps one
    number, so its state is tiny and the step keeps the gradient's
    direction. Ward, Wu and Bottou show it converges for any learning rate
    and b_0, without knowing the Lipschitz constant: a too small b_0 is
    corrected after a few steps, at a cost logarithmic in the mismatch.

    This is ``optax.chain(scale_by_adagrad_norm(...),
    optax.scale_by_learning_rate(learning_rate))``.

    Args:
      learning_rate: lr, a number >= 0 or an optax schedule of the step count
        (0 at the first step). Default 0.01.
      {initial_accumulator_value}
        Here that sum is of squared gradient norms, b_0^2 in the paper. Must
        be >= 0. Default 0.
      eps: added to b_t, outside the root (>= 0). Default 1e-8.
      per_leaf: one b per leaf (True) or one for the whole tree (False).
        Default True.
      {nonfinite}

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> import adagrad_jax
      >>> tx = adagrad_jax.adagrad_norm(learning_rate=0.5, per_leaf=False)
      >>> params = {"w": jnp.array([1.0, 1.0]), "b": jnp.array(1.0)}
      >>> state = tx.init(params)
      >>> grads = {"w": jnp.array([2.0, 0.0]), "b": jnp.array(-1.0)}
      >>> updates, state = tx.update(grads, state)
      >>> optax.apply_updates(params, updates)["b"]   # 1 + 0.5 * 1 / sqrt(4 + 1)
      Array(1.2236068, dtype=float32)
      >>> state[0].sum_of_squares
      Array(5., dtype=float32)

    References:
      Ward, Wu and Bottou, "AdaGrad stepsizes: Sharp convergence over
      nonconvex landscapes", ICML 2019 (JMLR 21, 2020).
    """
    caller = "adagrad_norm"
    checks.check_number(caller, "learning_rate", learning_rate, allow_schedule=True)
    nonfinite_policy.check(caller, nonfinite)
    return nonfinite_policy.wrap(
        caller,
        nonfinite,
        optax.chain(
            _adagrad_norm(caller, initial_accumulator_value, eps, per_leaf),
            optax.scale_by_learning_rate(learning_rate),
        ),
        skips_inside=False,
    )
