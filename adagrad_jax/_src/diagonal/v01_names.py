"""`sparse_adagrad` and `scale_by_sparse_adagrad`: the v0.1 names of `adagrad` and `scale_by_adagrad`."""

from __future__ import annotations

from typing import Any

import jax
import optax

from adagrad_jax._src.core import checks
from adagrad_jax._src.diagonal.adagrad import adagrad_impl, scale_by_adagrad_impl


@checks.checked_arguments
def scale_by_sparse_adagrad(
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    eps_root: jax.typing.ArrayLike = 0.0,
    accumulator_dtype: Any = None,
    row_wise: bool = False,
    pad_id: int | None = None,
    out_of_range: str = "drop",
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    r"""`scale_by_adagrad` under its v0.1 name; its rule for `RowSparse` gradients.

    Both take `RowSparse` gradients for tables (since 0.2 `scale_by_adagrad`
    does too); this docstring gives the row rule in full.

    Dense leaves get exactly `scale_by_adagrad`'s result. For a `RowSparse`
    leaf g of a table with V rows, at each step::

        live ids  = ids i with 0 <= i < V, i != pad_id          (others skipped)
        g_r       = sum of g.values[j] over j with g.indices[j] == r   (summed first)
        G_r      <- G_r + |g_r|^2                                (touched rows only)
        u_r       = g_r / (sqrt(G_r + eps_root) + eps)           (0 where the root is 0)

    and the update is ``RowSparse(rows, u)``, one entry per distinct live id
    (the other k - #distinct entries have out-of-range ids and zero values).
    A row no id touches keeps its G and gets no update: exactly what a dense
    gradient that is 0 on that row gives. With ``row_wise=True`` G holds one
    number per row (leading-axis entry) of every leaf and
    ``G_r <- G_r + mean(|g_r|^2)`` over the row, cutting the state of a V x D
    table from V * D to V numbers; the update is ``g_r / (sqrt(G_r +
    eps_root) + eps)`` with G_r shared by the row.

    Deduplication has a fixed size (k slots for k ids: a few rounds of hashing
    into a 4k-bucket table, then a segment sum), so it jit-compiles once per k
    and never leaves the device; the update lists the distinct ids in order
    of first appearance. Only the touched rows of G are read and written.

    Args:
      initial_accumulator_value: tau, the starting value of G (>= 0). Default 0.
      eps: added outside the square root (>= 0). Default 1e-8.
      eps_root: added to G under the square root (>= 0). Default 0.
      accumulator_dtype: real floating dtype of G. Default None: float32 for
        bfloat16/float16 tables, the real counterpart for complex ones, the
        table's dtype otherwise.
      row_wise: keep one accumulator entry per row instead of per coordinate.
        Default False. `update` then needs `params`: the row-wise state does
        not record the width of the rows, so gradients are checked against
        the parameters (at trace time, before any state changes).
      pad_id: a row id to treat as padding (skipped) besides the negative ids.
        Default None.
      out_of_range: what ids >= V do. ``"drop"`` (default): they are skipped,
        like padding; no other row changes. ``"error"``: the step raises,
        naming the first such id (as given: int64 ids unclipped), its position
        and the leaf. Eager calls raise a ``ValueError`` at once; a step under
        plain `jax.jit` raises a ``jax.errors.JaxRuntimeError`` carrying the
        same message when it runs (a host callback that runs only when an id
        is out of range; no `checkify` needed), also on a step sharded over
        several devices or processes (every device runs the check, so all of
        them raise together and none waits in a collective).
      nonfinite: what a NaN or +-inf gradient entry does: ``"propagate"``
        (default), ``"skip_coordinate"`` or ``"skip_step"``; see `adagrad`.

    Returns:
      An `optax.GradientTransformation` whose state is a `ScaleByAdagradState`;
      its ``sum_of_squares`` has each parameter's shape, or ``shape[:1]`` with
      ``row_wise=True``.

    Raises:
      ValueError / TypeError: at construction for invalid arguments; at trace
        time for a RowSparse whose ids are not integers or whose rows do not
        match the table, or for trees that differ from the state's (naming the
        path).

    Example:
      >>> import jax.numpy as jnp
      >>> import adagrad_jax
      >>> tx = adagrad_jax.scale_by_sparse_adagrad(eps=0.0)
      >>> state = tx.init(jnp.zeros((4, 2)))
      >>> g = adagrad_jax.RowSparse(
      ...     jnp.array([3, 1, 3]), jnp.array([[1.0, 0.0], [4.0, 0.0], [2.0, 0.0]]))
      >>> u, state = tx.update(g, state)
      >>> u.todense(4)      # row 3: g = 1 + 2 = 3 and 3 / sqrt(9) = 1
      Array([[0., 0.],
             [1., 0.],
             [0., 0.],
             [1., 0.]], dtype=float32)
      >>> state.sum_of_squares[:, 0]
      Array([ 0., 16.,  0.,  9.], dtype=float32)

    References:
      Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online
      Learning and Stochastic Optimization", JMLR 12, 2011.

    Differences from other libraries:
      ``torch.optim.Adagrad`` with a sparse gradient coalesces duplicates the
      same way; it has no row-wise mode and no padding ids (``nn.Embedding``'s
      ``padding_idx`` gives those rows a zero gradient instead).
    """
    arguments = dict(locals())  # this call's arguments, forwarded by name
    return scale_by_adagrad_impl("scale_by_sparse_adagrad", **arguments)


@checks.checked_arguments
def sparse_adagrad(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    eps_root: jax.typing.ArrayLike = 0.0,
    weight_decay: jax.typing.ArrayLike | None = None,
    accumulator_dtype: Any = None,
    row_wise: bool = False,
    pad_id: int | None = None,
    out_of_range: str = "drop",
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    r"""`adagrad` under its v0.1 name; its rule for `RowSparse` gradients.

    Since 0.2 `adagrad` takes `RowSparse` gradients itself, with the same
    arguments; this docstring gives the row rule in full.

    For dense leaves this is `adagrad_jax.adagrad` to the last bit. For a
    `RowSparse` gradient of a V-row table, at step t = 1, 2, ...
    (count = t - 1)::

        g_r   = sum of the values whose id is r        (ids < 0, >= V or pad_id skipped)
        G_r  <- G_r + |g_r|^2                          (rows r touched this step)
        u_r   = -lr(count) * g_r / (sqrt(G_r + eps_root) + eps)   (0 where the root is 0)

    and the update comes back as ``RowSparse(rows, u)``: apply it with
    `adagrad_jax.apply_updates`. Untouched rows keep their G and do not move,
    which is what the dense rule does with a gradient that is 0 there, so
    training with row gradients gives the dense result. Under `jax.jit` with
    the parameters and state donated, a step reads and writes only the touched
    rows, in place: O(k * D) for k ids. ``row_wise=True`` keeps one G per row,
    ``G_r <- G_r + mean(|g_r|^2)``, a factor D less state.

    This is ``optax.chain(coupled weight decay or identity,
    scale_by_sparse_adagrad(...), on_row_values(optax.scale_by_learning_rate(
    learning_rate)))``: its state has the structure of `adagrad`'s, so the two
    can read each other's checkpoints (without ``row_wise``).

    Args:
      learning_rate: lr, a number >= 0 or an optax schedule of the step count
        (0 at the first step). Default 0.01.
      initial_accumulator_value: tau, the starting value of G (>= 0). Default 0.
      eps: added outside the square root (>= 0). Default 1e-8.
      eps_root: added inside the square root (>= 0). Default 0.
      weight_decay: coupled L2 coefficient for dense leaves (>= 0), or None.
        Default None (no decay; unlike `adagrad`'s default 0.0, None stays
        static under `optax.inject_hyperparams`). Any value but None or a
        Python 0 raises ValueError when a RowSparse leaf arrives: decay would
        touch every row of the table.
      accumulator_dtype: real floating dtype of G. Default None (float32 for
        bfloat16/float16 parameters, the parameter's dtype otherwise).
      row_wise: one accumulator entry per row (leading-axis entry) of every
        leaf. Default False.
      pad_id: a row id treated as padding, besides negative ids. Default None.
      out_of_range: ``"drop"`` (default) skips ids >= V; ``"error"`` raises
        naming the id (see `scale_by_sparse_adagrad`).
      nonfinite: what a NaN or +-inf gradient entry does: ``"propagate"``
        (default), ``"skip_coordinate"`` or ``"skip_step"``; see `adagrad`.

    Returns:
      An `optax.GradientTransformation`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import adagrad_jax
      >>> params = {"table": jnp.zeros((5, 2)), "w": jnp.ones(2)}
      >>> tx = adagrad_jax.sparse_adagrad(learning_rate=0.1)
      >>> state = tx.init(params)
      >>> grads = {"table": adagrad_jax.RowSparse(jnp.array([4, 4, -1]), jnp.ones((3, 2))),
      ...          "w": jnp.array([2.0, 0.0])}
      >>> updates, state = tx.update(grads, state, params)
      >>> params = adagrad_jax.apply_updates(params, updates)
      >>> params["table"][4], params["w"]      # first step: -lr * sign(g)
      (Array([-0.1, -0.1], dtype=float32), Array([0.9, 1. ], dtype=float32))

    References:
      Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online
      Learning and Stochastic Optimization", JMLR 12, 2011.
    """
    arguments = dict(locals())  # this call's arguments, forwarded by name
    return adagrad_impl("sparse_adagrad", **arguments)
