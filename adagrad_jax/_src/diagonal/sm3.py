"""SM3 (Anil, Gupta, Koren and Singer 2019): `ScaleBySM3State`, `scale_by_sm3`, `sm3`.

Adagrad's per-coordinate sums in the memory of one vector per axis: for a
leaf of shape (n_1, ..., n_r), r >= 2, the state is r vectors of lengths
n_1, ..., n_r instead of n_1 * ... * n_r numbers (the paper's SM3-II with the
cover of rows, columns, ...: one set per index of each axis).

Tables: a `RowSparse` gradient updates mu_1 at the touched rows and the
other vectors by a max over those rows (`_table_leaf`), which is exactly the
dense step with zero rows elsewhere: an untouched row i has nu(i, .) =
min(mu_1(i), ...) <= each of its covers, which changes no max (mu_1(i) itself
stays, as the largest of every vector is the same number, max nu).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.core import checks, nonfinite_policy, placement, slots, trees
from adagrad_jax._src.core.docs import shared_args
from adagrad_jax._src.core.numerics import accumulator_dtype_for, per_row
from adagrad_jax._src.tables.apply import on_row_values
from adagrad_jax._src.tables.engine import gather_rows, row_gradient, scatter_rows
from adagrad_jax._src.tables.ids import check_id_flags
from adagrad_jax._src.tables.row_sparse import (
    RowSparse,
    check_gradient_dtypes,
    check_row_sparse,
    is_row_sparse,
    path_name,
    values_view,
)


class ScaleBySM3State(NamedTuple):
    """State of `scale_by_sm3`.

    Attributes:
      accumulators: a tree like the parameters whose leaves are tuples: for a
        leaf of rank r >= 2, r vectors mu_1, ..., mu_r (mu_k has the leaf's
        k-th dimension; float32 for bfloat16/float16 parameters, the
        parameter's dtype otherwise; mu_1 placed like the parameter's row
        axis, the others replicated over its mesh);
        for a scalar or a vector, a 1-tuple holding one full accumulator of
        the leaf's shape, placed like it.
      momentum: m, a tree like the parameters (in the accumulators' dtype);
        None with ``momentum=0`` (no momentum is kept).
    """

    accumulators: optax.Updates
    momentum: optax.Updates | None


def _is_covered(shape: tuple) -> bool:
    """Whether a leaf gets one vector per axis (rank >= 2) or a full accumulator."""
    return len(shape) >= 2


def _is_accumulator_tuple(x: Any) -> bool:
    """A leaf's accumulators: a plain tuple of arrays (containers of the tree hold tuples)."""
    return type(x) is tuple and all(hasattr(v, "shape") for v in x)


def _expanded(vector: jax.Array, axis: int, rank: int) -> jax.Array:
    """`vector` shaped to broadcast along every axis of a rank-`rank` leaf but `axis`."""
    shape = [1] * rank
    shape[axis] = vector.shape[0]
    return vector.reshape(shape)


def sm3_nu(g: jax.Array, accumulators: tuple, dtype: Any) -> jax.Array:
    """nu = min over the covers of the accumulators, plus g^2, in `dtype`."""
    g2 = jnp.square(g.astype(dtype))
    if not _is_covered(g.shape):
        return accumulators[0] + g2
    rank = g.ndim
    bound = functools.reduce(
        jnp.minimum, [_expanded(mu, k, rank) for k, mu in enumerate(accumulators)]
    )
    return bound + g2


def sm3_accumulators(nu: jax.Array) -> tuple:
    """The new accumulators: for each axis, the max of nu over the other axes."""
    if not _is_covered(nu.shape):
        return (nu,)
    axes = range(nu.ndim)
    # mu_1 keeps the row axis' placement; the others are replicated, as the state
    # holds them (on an Explicit mesh a max over a split axis would keep that
    # axis' split in its type).
    return (jnp.max(nu, axis=tuple(axes[1:])),) + tuple(
        placement.replicated(jnp.max(nu, axis=tuple(a for a in axes if a != k))) for k in axes[1:]
    )


def _table_leaf(caller, where, g, accumulators, moments, *, eps, momentum, id_rules, nonfinite):
    """SM3's step on the touched rows of a table (module docstring): (update, accs, m).

    With ``nonfinite="skip_coordinate"`` a non-finite entry of the summed rows
    counts as a zero gradient (its update is 0); `nonfinite_policy.wrap`
    applies "skip_step".
    """
    mu_rows_table = accumulators[0]
    dtype = mu_rows_table.dtype
    rows, summed = row_gradient(caller, where, g, mu_rows_table.shape[0], dtype, **id_rules)
    if g.indices.shape[0] == 0 or mu_rows_table.shape[0] == 0:  # Nothing to gather.
        return RowSparse(rows, summed), accumulators, moments
    if nonfinite == "skip_coordinate":
        summed = nonfinite_policy.keep_or_zero(jnp.isfinite(summed), summed)
    like = (mu_rows_table, rows, summed)
    # Dead entries read 0: their nu = min(0, ...) + 0 changes no max, and their
    # writes are dropped.
    mu_rows = gather_rows(mu_rows_table, rows, 0, like)
    nu = sm3_nu(summed, (mu_rows, *accumulators[1:]), dtype)
    direction = _direction(summed, nu, eps)
    if _is_covered(nu.shape):
        axes = range(nu.ndim)
        new_rows = jnp.max(nu, axis=tuple(axes[1:]))
        others = tuple(
            placement.replicated(
                jnp.maximum(mu, jnp.max(nu, axis=tuple(a for a in axes if a != k)))
            )
            for k, mu in zip(axes[1:], accumulators[1:])
        )
    else:
        new_rows, others = nu, ()
    accumulators = (scatter_rows(mu_rows_table, rows, new_rows, like), *others)
    live = per_row(rows < mu_rows_table.shape[0], summed.ndim)
    if moments is not None:
        beta = jnp.asarray(momentum).astype(moments.dtype)
        m_rows = (1 - beta) * direction + beta * gather_rows(moments, rows, 0, like)
        moments = scatter_rows(moments, rows, m_rows, like)
        direction = m_rows
    u = jnp.where(live, direction.astype(g.values.dtype), jnp.zeros((), g.values.dtype))
    return RowSparse(rows, u), accumulators, moments


def _direction(g: jax.Array, nu: jax.Array, eps: Any) -> jax.Array:
    """g / sqrt(nu + eps), and exactly 0 where nu == 0 (no gradient there yet)."""
    dtype = nu.dtype
    positive = nu > 0
    safe = jnp.where(positive, nu, jnp.ones((), dtype))
    scale = jnp.where(positive, jax.lax.rsqrt(safe + jnp.asarray(eps, dtype)), 0)
    return g.astype(dtype) * scale


def _check_momentum(caller: str, momentum: Any) -> None:
    checks.check_number(caller, "momentum", momentum)
    number = checks.python_number(momentum)
    if number is not None and not 0 <= number < 1:
        raise ValueError(
            f"{caller}(momentum={momentum!r}): momentum must be in [0, 1) (0: no"
            " momentum; the update is the average (1 - momentum) * u + momentum * m)."
        )


def _sm3(
    caller: str, momentum: Any, eps: Any, id_rules: dict, nonfinite: str
) -> optax.GradientTransformation:
    _check_momentum(caller, momentum)
    checks.check_number(caller, "eps", eps)
    check_id_flags(caller, id_rules["pad_id"], id_rules["out_of_range"], id_rules["unique_rows"])
    keeps_momentum = not checks.is_zero_constant(momentum)

    def init_fn(params):
        checks.check_real_params(caller, params)

        def leaf(path, p):
            p = p if hasattr(p, "shape") else jnp.asarray(p)
            trees.check_param_dtype(caller, path, p.dtype)
            dtype = accumulator_dtype_for(p.dtype)
            if not _is_covered(p.shape):  # placed like the parameter
                return (slots.placed_full(p, p.shape, 0, dtype, replicate=False),)
            # mu_1 like the parameter's rows (a table's row axis); the other
            # vectors replicated over the parameter's mesh.
            rows = slots.init_sum_of_squares(caller, placement.row_like(p), 0.0, dtype)
            return (rows,) + tuple(
                slots.placed_full(p, (n,), 0, dtype, replicate=True) for n in p.shape[1:]
            )

        accumulators = jax.tree_util.tree_map_with_path(leaf, params)
        # m: zeros like the parameters (their shape, sharding, accumulator dtype).
        moments = slots.init_sum_of_squares(caller, params, 0.0, None) if keeps_momentum else None
        return ScaleBySM3State(accumulators=accumulators, momentum=moments)

    def update_fn(updates, state, params=None):
        del params
        trees.check_same_structure(
            caller,
            "updates",
            values_view(updates),
            "state.accumulators",
            jax.tree.map(lambda a: a[0], state.accumulators, is_leaf=_is_accumulator_tuple),
        )
        updates = jax.tree.map(
            lambda g: g if is_row_sparse(g) else jnp.asarray(g), updates, is_leaf=is_row_sparse
        )
        check_gradient_dtypes(caller, updates)

        def leaf(path, g, accumulators, m):
            # One full accumulator (rank <= 1) has the parameter's shape; vectors, its dims.
            full = len(accumulators) == 1
            expected = accumulators[0].shape if full else tuple(mu.shape[0] for mu in accumulators)
            if is_row_sparse(g):
                where = path_name(path)
                if not expected:
                    raise ValueError(
                        f"{caller}: {where} is a RowSparse but its parameter is a scalar;"
                        " only tables (arrays with a row axis) take row gradients."
                    )
                check_row_sparse(caller, where, g, tuple(expected[1:]))
                return _table_leaf(
                    caller,
                    where,
                    g,
                    accumulators,
                    m,
                    eps=eps,
                    momentum=momentum,
                    id_rules=id_rules,
                    nonfinite=nonfinite,
                )
            if tuple(g.shape) != tuple(expected):
                raise ValueError(
                    f"{caller}: updates{jax.tree_util.keystr(path)} has shape"
                    f" {tuple(g.shape)}, but the state's accumulators were made for a"
                    f" parameter of shape {tuple(expected)}. Pass gradients shaped like the"
                    " parameters."
                )
            nu = sm3_nu(g, accumulators, accumulators[0].dtype)
            direction = _direction(g, nu, eps)
            if m is not None:
                beta = jnp.asarray(momentum).astype(m.dtype)
                direction = m = (1 - beta) * direction + beta * m
            return direction.astype(g.dtype), sm3_accumulators(nu), m

        leaves, treedef = jax.tree_util.tree_flatten_with_path(updates, is_leaf=is_row_sparse)
        acc_leaves = treedef.flatten_up_to(state.accumulators)
        m_leaves = treedef.flatten_up_to(state.momentum) if keeps_momentum else [None] * len(leaves)
        out = [leaf(path, g, a, m) for ((path, g), a, m) in zip(leaves, acc_leaves, m_leaves)]
        new = jax.tree.unflatten(treedef, [u for u, _, _ in out])
        accumulators = jax.tree.unflatten(treedef, [a for _, a, _ in out])
        moments = jax.tree.unflatten(treedef, [m for _, _, m in out]) if keeps_momentum else None
        return new, ScaleBySM3State(accumulators, moments)

    return optax.GradientTransformation(init_fn, update_fn)


@checks.checked_arguments
@shared_args
def scale_by_sm3(
    momentum: jax.typing.ArrayLike = 0.0,
    *,
    eps: jax.typing.ArrayLike = 1e-8,
    pad_id: int | None = None,
    out_of_range: str = "drop",
    unique_rows: int | None = None,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    r"""SM3's scaling without the learning rate (SM3-II, one cover per axis).

    For a leaf of rank r >= 2 the state holds one vector per axis, mu_1, ...,
    mu_r (mu_k as long as the k-th dimension, started at 0). At step t, for
    every coordinate i = (i_1, ..., i_r)::

        nu_t(i)   = min_k mu_k(i_k) + g_t(i)^2
        u_t(i)    = g_t(i) / sqrt(nu_t(i) + eps)     (exactly 0 where nu_t(i) == 0)
        mu_k(j)   = max of nu_t(i) over the i with i_k = j      (for every k)

    Scalars and vectors keep a full accumulator (mu = nu, Adagrad's sum). With
    ``momentum`` = beta > 0 the output is m_t = (1 - beta) * u_t + beta *
    m_{t-1} (m_0 = 0), as in optax; beta = 0 keeps no m and outputs u_t.

    nu upper-bounds Adagrad's sum: nu_t(i) >= sum_{s<=t} g_s(i)^2 for every
    coordinate (the paper's Proposition 1), so SM3 steps are at most
    Adagrad's, with r vectors of state instead of a leaf-sized array.

    Embedding tables: for a `RowSparse` gradient of a (V, n_2, ...) table
    (duplicate ids summed first, padding and out-of-range ids skipped, as in
    `scale_by_adagrad`), nu is computed on the touched rows only, mu_1 is
    written at those rows and every other mu_k becomes
    max(mu_k, max of nu over the touched rows and the other axes): O(k * D)
    work, and exactly the dense step with a zero gradient on the other rows
    (their nu never exceeds a cover, so no max changes). mu_1 is placed like
    the table's row axis, the other vectors are replicated. With momentum,
    the m of untouched rows is left as it is (lazy, as the rest of the
    family), where the dense rule would decay it.

    Args:
      momentum: beta in [0, 1). Default 0 (no momentum state).
      eps: added inside the root (>= 0), as in optax. Default 1e-8.
      {pad_id}
      {out_of_range}
      {unique_rows}
      {nonfinite}

    Returns:
      An `optax.GradientTransformation` whose state is a `ScaleBySM3State`.

    Raises:
      ValueError, TypeError: at construction, for a momentum outside [0, 1)
        or an eps that is negative, not finite or not a number; at `init`,
        TypeError for integer, boolean or complex parameters; at trace time,
        ValueError for gradients whose tree or shapes differ from the state's.

    Example:
      >>> import jax.numpy as jnp
      >>> import adagrad_jax
      >>> tx = adagrad_jax.scale_by_sm3(eps=0.0)
      >>> state = tx.init(jnp.zeros((2, 3)))
      >>> [mu.shape for mu in state.accumulators]   # 2 + 3 numbers, not 6
      [(2,), (3,)]
      >>> u, state = tx.update(jnp.array([[3.0, 0.0, 4.0], [0.0, 1.0, 0.0]]), state)
      >>> u                                          # g / |g| where g != 0
      Array([[1., 0., 1.],
             [0., 1., 0.]], dtype=float32)
      >>> state.accumulators                         # row and column maxima of g^2
      (Array([16.,  1.], dtype=float32), Array([ 9.,  1., 16.], dtype=float32))

    References:
      Anil, Gupta, Koren and Singer, "Memory-Efficient Adaptive Optimization",
      NeurIPS 2019, algorithm SM3-II.
    """
    caller = "scale_by_sm3"
    nonfinite_policy.check(caller, nonfinite)
    id_rules = {"pad_id": pad_id, "out_of_range": out_of_range, "unique_rows": unique_rows}
    return nonfinite_policy.wrap(
        caller,
        nonfinite,
        _sm3(caller, momentum, eps, id_rules, nonfinite),
        skips_inside=False,
        tables_inside=True,
    )


@checks.checked_arguments
@shared_args
def sm3(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    momentum: jax.typing.ArrayLike = 0.0,
    *,
    eps: jax.typing.ArrayLike = 1e-8,
    pad_id: int | None = None,
    out_of_range: str = "drop",
    unique_rows: int | None = None,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    r"""SM3: Adagrad with one accumulator vector per axis of each leaf (SM3-II).

    The rule of `scale_by_sm3`, then the learning rate: for a leaf of rank
    r >= 2 with one accumulator vector mu_k per axis (started at 0)::

        nu_t(i)   = min_k mu_k(i_k) + g_t(i)^2
        u_t(i)    = g_t(i) / sqrt(nu_t(i) + eps)     (exactly 0 where nu_t(i) == 0)
        mu_k(j)   = max of nu_t(i) over the i with i_k = j
        m_t       = (1 - beta) * u_t + beta * m_{t-1}     (beta = momentum > 0)
        w_{t+1}   = w_t - lr(count) * m_t                 (u_t when beta = 0)

    Scalars and vectors keep a full accumulator (Adagrad's sum). nu
    upper-bounds Adagrad's per-coordinate sum, so SM3's steps are at most
    Adagrad's; the state of an (m, n) layer is m + n numbers (with momentum,
    plus m * n). A table's `RowSparse` gradient updates only its touched rows'
    entries of mu_1 and the other vectors by a max over those rows: the dense
    rule's numbers (see `scale_by_sm3`), and the update comes back as a
    `RowSparse` for `adagrad_jax.apply_updates`.

    The step applied is -lr(count) * u_t (or * m_t with momentum): this is
    ``optax.chain(scale_by_sm3(momentum, eps=eps),
    optax.scale_by_learning_rate(learning_rate))``.

    Args:
      learning_rate: lr, a number >= 0 or an optax schedule of the step count.
        Default 0.01.
      momentum: beta in [0, 1). Default 0 (no momentum state: the memory of a
        (m, n) layer's state is m + n numbers).
      eps: added inside the root (>= 0), as in optax. Default 1e-8.
      {pad_id}
      {out_of_range}
      {unique_rows}
      {nonfinite}

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> import adagrad_jax
      >>> params = jnp.zeros((2, 2))
      >>> tx = adagrad_jax.sm3(learning_rate=0.5)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([[2.0, 0.0], [0.0, -1.0]]), state)
      >>> optax.apply_updates(params, updates)   # -0.5 * g / |g| where g != 0
      Array([[-0.5,  0. ],
             [ 0. ,  0.5]], dtype=float32)

    Differences from optax:
      ``optax.sm3(learning_rate, momentum=0.9)`` has momentum 0.9 by default
      and keeps a parameter-sized momentum tree even with momentum 0; here the
      default is 0 and no momentum is kept then. optax's ``scale_by_sm3`` also
      has ``b2`` (an exponential average of the squares); the paper's and this
      rule are sums (b2 = 1). Where the settings coincide (a constant learning
      rate, b2 = 1) the numbers are optax's; optax fails on scalar leaves, which
      keep a full accumulator here. Anil et al. add no eps; optax's eps sits
      inside the root, and so does this one.

    References:
      Anil, Gupta, Koren and Singer, "Memory-Efficient Adaptive Optimization",
      NeurIPS 2019, algorithm SM3-II.
    """
    caller = "sm3"
    checks.check_number(caller, "learning_rate", learning_rate, allow_schedule=True)
    nonfinite_policy.check(caller, nonfinite)
    id_rules = {"pad_id": pad_id, "out_of_range": out_of_range, "unique_rows": unique_rows}
    return nonfinite_policy.wrap(
        caller,
        nonfinite,
        optax.chain(
            _sm3(caller, momentum, eps, id_rules, nonfinite),
            on_row_values(optax.scale_by_learning_rate(learning_rate)),
        ),
        skips_inside=False,
        tables_inside=True,
    )
