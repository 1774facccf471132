"""Proximal Adagrad (FOBOS with Adagrad step sizes): `ProximalAdagradState`, `proximal_adagrad`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.core import checks, nonfinite_policy, numerics, quantized, slots
from adagrad_jax._src.core.docs import shared_args
from adagrad_jax._src.core.numerics import squared_magnitude
from adagrad_jax._src.core.rounding import round_sum, rounds, update_dtype
from adagrad_jax._src.core.slots import init_sum_of_squares
from adagrad_jax._src.tables import stochastic_rounding as rounding
from adagrad_jax._src.tables.engine import map_rule
from adagrad_jax._src.tables.ids import check_id_flags


class ProximalAdagradState(NamedTuple):
    """State of `proximal_adagrad`.

    Attributes:
      count: int32 number of steps taken (the schedule's argument).
      sum_of_squares: G, a tree like the parameters (float32 for bfloat16 and
        float16 parameters), started at `initial_accumulator_value`.
    """

    count: jax.Array  # type: ignore[assignment]  # (shadows tuple.count, as in optax)
    sum_of_squares: optax.Updates


def proximal_adagrad_rule(lr: Any, l1: Any, l2: Any, eps: Any, eps_root: Any, tau: Any):
    """The leaf rule of `proximal_adagrad` (see `adagrad_jax._rows._engine`)."""
    regularized = not (checks.is_zero_constant(l1) and checks.is_zero_constant(l2))

    def rule(g, slots, w, rounder=None):
        (s,) = slots
        out = update_dtype(rounder, g)
        coded = quantized.is_int8(s)
        if coded:  # requantized stochastically (`core/quantized.py`)
            total, s = quantized.add_squares(s, g, rounder.bits(g.shape))
        else:
            sq = squared_magnitude(g, jnp.float32 if rounds(rounder, s) else s.dtype)
            total = s = round_sum(rounder, s, sq)
        # (tau keeps no coded sum normal: it may decode to 0.)
        a = numerics.adagrad_step_size(lr, total, eps, eps_root, tau=0.0 if coded else tau)
        g_acc = g.astype(total.dtype)
        if not regularized:  # Plain Adagrad: no parameter read.
            return (-(a * g_acc)).astype(out), (s,)
        w_acc = w.astype(total.dtype)
        v = w_acc - a * g_acc
        shrunk = numerics.soft_threshold(v, a * jnp.asarray(l1, total.dtype))
        new_w = shrunk / (1 + a * jnp.asarray(l2, total.dtype))
        return (new_w - w_acc).astype(out), (s,)

    return rule, regularized


@checks.checked_arguments
@shared_args
def proximal_adagrad(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    l1: jax.typing.ArrayLike = 0.0,
    l2: jax.typing.ArrayLike = 0.0,
    eps_root: jax.typing.ArrayLike = 0.0,
    accumulator_dtype: Any = None,
    pad_id: int | None = None,
    out_of_range: str = "drop",
    unique_rows: int | None = None,
    nonfinite: str = "propagate",
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformation:
    r"""Proximal Adagrad: an Adagrad step, then the L1 and L2 proximal maps.

    Composite mirror descent (FOBOS) with Adagrad's per-coordinate step sizes.
    For every coordinate, at step t = 1, 2, ... (count = t - 1)::

        G_0     = initial_accumulator_value                      (tau, at init)
        G_t     = G_{t-1} + g_t^2                                (before use)
        a_t     = lr(count) / (sqrt(G_t + eps_root) + eps)       (a_t = 0 where the root is 0)
        v       = w_t - a_t * g_t                                (the Adagrad step)
        w_{t+1} = sign(v) * max(|v| - a_t * l1, 0) / (1 + a_t * l2)
        update  = w_{t+1} - w_t

    The L1 term sets every coordinate with |v| <= a_t * l1 to exactly 0.0;
    the L2 term shrinks the rest. With l1 = l2 = 0 (Python zeros) this is
    `adagrad` with the same arguments (to rounding: it forms lr / root
    first), and `update` needs no `params`.
    Arithmetic is done in the accumulator's dtype (float32 for bfloat16 and
    float16 parameters); the update comes back in the gradient's dtype, and
    ``w + update`` is exactly 0.0 where the rule gives 0.

    Embedding tables: a `RowSparse` gradient updates only the rows it touches
    (deduplicated; ids < 0, ``pad_id`` and ids >= the row count skipped, as in
    `adagrad`), and the update comes back as a `RowSparse`: apply it
    with `adagrad_jax.apply_updates`. This is TensorFlow's "lazy" sparse
    rule. It differs from the dense rule only for rows with no gradient:
    densely, a zero gradient still shrinks w by the L1/L2 maps at every step
    (with ``a_t`` of that row's G); lazily, untouched rows do not move.

    Args:
      learning_rate: lr, a number >= 0 or an optax schedule of the step count
        (0 at the first step). Default 0.01.
      {initial_accumulator_value}
        Must be >= 0. Default 0.
      eps: added outside the square root (>= 0). Default 1e-8.
      l1: L1 strength (>= 0): the objective gains l1 * |w|. Default 0.
      l2: L2 strength (>= 0): the objective gains (l2 / 2) * w^2. Default 0.
      eps_root: added to G under the square root (>= 0). Default 0.
      accumulator_dtype: real floating dtype of G and of the arithmetic, or
        ``"int8"`` (G in 8 bits, the arithmetic in float32). Default None:
        float32 for bfloat16/float16 parameters, the parameter's dtype
        otherwise.
        {int8}
      {pad_id}
      {out_of_range}
      {unique_rows}
      {nonfinite}
      {stochastic_rounding}
      {seed}

    Returns:
      An `optax.GradientTransformation` whose state is a `ProximalAdagradState`.
      Its `update` needs `params` unless l1 and l2 are Python zeros.

    Raises:
      ValueError: at construction for a negative or non-finite number; at
        trace time when `update` gets no `params`, or gradients whose tree or
        shapes differ from the state's (naming the path).
      TypeError: at `init` for integer, boolean or complex parameter leaves.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> import adagrad_jax
      >>> params = jnp.array([1.0, 0.625])
      >>> tx = adagrad_jax.proximal_adagrad(learning_rate=0.5, eps=0.0, l1=0.25)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([1.0, 1.0]), state, params)
      >>> optax.apply_updates(params, updates)   # v = w - 0.5 * 1 / 1; |v| - 0.5 * 0.25
      Array([0.375, 0.   ], dtype=float32)

    References:
      Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online
      Learning and Stochastic Optimization", JMLR 12, 2011, section 5
      (composite mirror descent); Duchi and Singer, "Efficient Online and
      Batch Learning Using Forward Backward Splitting", JMLR 10, 2009.

    Differences from other libraries:
      TF1's ``ProximalAdagradOptimizer`` has no epsilon and tau = 0.1 (its
      kernel is this rule with eps = 0); `adagrad_jax.compat.tf1_proximal_adagrad`
      reproduces it. optax, PyTorch and Keras have no proximal Adagrad.
    """
    caller = "proximal_adagrad"
    checks.check_number(caller, "learning_rate", learning_rate, allow_schedule=True)
    checks.check_nonnegative(
        caller,
        initial_accumulator_value=initial_accumulator_value,
        eps=eps,
        l1=l1,
        l2=l2,
        eps_root=eps_root,
    )
    accumulator_dtype = checks.check_accumulator_dtype(caller, accumulator_dtype, int8_refused=None)
    check_id_flags(caller, pad_id, out_of_range, unique_rows)
    nonfinite_policy.check(caller, nonfinite)
    stochastic_rounding = rounding.check_arguments(caller, stochastic_rounding, seed)

    def init_fn(params):
        checks.check_real_params(caller, params)
        return ProximalAdagradState(
            count=slots.init_count(),
            sum_of_squares=init_sum_of_squares(
                caller, params, initial_accumulator_value, accumulator_dtype
            ),
        )

    def update_fn(updates, state, params=None, *, rounding_key=None, **extra_args):
        del extra_args
        lr = numerics.learning_rate_at(learning_rate, state.count)
        rule, regularized = proximal_adagrad_rule(
            lr, l1, l2, eps, eps_root, initial_accumulator_value
        )
        updates, (sums,) = map_rule(
            caller,
            rule,
            updates,
            (state.sum_of_squares,),
            params,
            read_params=regularized,
            pad_id=pad_id,
            out_of_range=out_of_range,
            unique_rows=unique_rows,
            nonfinite=nonfinite,
            rounding=rounding_key,
        )
        return updates, ProximalAdagradState(optax.safe_increment(state.count), sums)

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    tx = rounding.optional(
        caller,
        stochastic_rounding,
        seed,
        tx,
        accumulator_dtype=accumulator_dtype,
    )
    return nonfinite_policy.wrap(caller, nonfinite, tx, skips_inside=True)
