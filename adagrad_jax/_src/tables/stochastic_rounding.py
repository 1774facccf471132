"""``stochastic_rounding=True``: low-precision weights and state rounded without bias.

`wrap` puts an optimizer's chain under stochastic rounding. Its state is
``StochasticRoundingState(count, inner_state)``; at each step it

1. passes the step's `RoundingKey` (seed, count) to the chain as the optax
   extra argument ``rounding_key``, which the stages built on the row engine
   hand to their rules (`map_rule(..., rounding=)`): a bfloat16 or float16
   accumulator is summed in float32 and rounded stochastically;
2. rounds the new weights: for each bfloat16 or float16 parameter w with
   update u (float32 arithmetic), ``w_new = SR(w + u)`` and the update that
   comes back is ``w_new - w`` in float32, which `optax.apply_updates` and
   `adagrad_jax.apply_updates` add to w in float32 and round to w's dtype:
   that lands on w_new exactly (the difference of two bfloat16 or float16
   numbers is exact in float32 unless they are more than 2**16 apart in
   magnitude, where the sum still rounds to w_new);
3. counts the step.

Other dtypes pass through untouched. Table rows are keyed by their ids, so a
table trained densely, row by row, or sharded rounds alike.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.core import checks, quantized
from adagrad_jax._src.core.numerics import LOW_PRECISION
from adagrad_jax._src.core.rounding import WEIGHTS, RoundingKey, random_bits, stochastic_round
from adagrad_jax._src.tables.engine import gather_rows
from adagrad_jax._src.tables.row_sparse import RowSparse, is_row_sparse, path_name


class StochasticRoundingState(NamedTuple):
    """State of an optimizer built with ``stochastic_rounding=True``.

    Attributes:
      count: int32, the steps taken; with the seed it keys the step's random numbers.
      inner_state: the optimizer's state without stochastic rounding.
    """

    count: jax.Array  # type: ignore[assignment]  # (shadows tuple.count, as in optax)
    inner_state: Any


def check_arguments(caller: str, stochastic_rounding: Any, seed: Any) -> bool:
    """Checks ``stochastic_rounding`` (a bool) and ``seed`` (an integer in [0, 2**32)).

    A traced integer seed (`optax.inject_hyperparams` passes one) is checked
    for its shape and dtype only.
    """
    stochastic_rounding = checks.check_bool(caller, "stochastic_rounding", stochastic_rounding)
    checks.check_integer(caller, "seed", seed, low=0, high=2**32 - 1)
    return stochastic_rounding


def _seed_word(seed: Any) -> jax.Array:
    if isinstance(seed, int):
        return jnp.uint32(seed)
    return jnp.asarray(seed).astype(jnp.uint32)


def _round_leaf(key, i, path, p, u):
    if p is None or u is None or jnp.dtype(jnp.result_type(p)) not in LOW_PRECISION:
        return u
    p = jnp.asarray(p)
    if is_row_sparse(u):
        rows = u.indices
        w = gather_rows(p, rows, 0, like=(p, rows, u.values)).astype(jnp.float32)
        x = w + u.values.astype(jnp.float32)
        new = stochastic_round(x, p.dtype, random_bits(key, WEIGHTS, i, rows, x.shape))
        return RowSparse(rows, new.astype(jnp.float32) - w)
    w = p.astype(jnp.float32)
    x = w + jnp.asarray(u).astype(jnp.float32)
    new = stochastic_round(x, p.dtype, random_bits(key, WEIGHTS, i, None, x.shape))
    return new.astype(jnp.float32) - w


def wrap(
    caller: str, seed: Any, inner: optax.GradientTransformation, *, round_weights: bool = True
) -> optax.GradientTransformation:
    """`inner` with stochastic rounding of its low-precision weights and state (module doc).

    With ``round_weights=False`` (8-bit accumulators without
    ``stochastic_rounding``) only the state is rounded: the step is keyed and
    counted, the updates pass through and `update` needs no `params`.
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params):
        return StochasticRoundingState(jnp.zeros([], jnp.int32), inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        if not isinstance(state, StochasticRoundingState):
            raise TypeError(
                f"{caller}(stochastic_rounding=True): the state is a {type(state).__name__},"
                " not the StochasticRoundingState that init returns with this option."
                " Pass the state that tx.init returned."
            )
        if params is None and round_weights:
            raise ValueError(
                f"{caller}(stochastic_rounding=True): update(updates, state, params) needs"
                " params: the new weights are rounded, which reads the current ones. Pass"
                " them as the third argument."
            )
        key = RoundingKey(_seed_word(seed), state.count.astype(jnp.uint32), round_weights)
        updates, inner_state = inner.update(
            updates, state.inner_state, params, rounding_key=key, **extra_args
        )
        if not round_weights:
            return updates, StochasticRoundingState(state.count + 1, inner_state)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(updates, is_leaf=is_row_sparse)
        param_leaves = treedef.flatten_up_to(params)
        rounded = [
            _round_leaf(key, i, path_name(path), p, u)
            for i, ((path, u), p) in enumerate(zip(leaves, param_leaves))
        ]
        return jax.tree.unflatten(treedef, rounded), StochasticRoundingState(
            state.count + 1, inner_state
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def optional(
    caller: str,
    stochastic_rounding: bool,
    seed: Any,
    inner: optax.GradientTransformation,
    *,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformation:
    """`wrap` with ``stochastic_rounding=True`` or 8-bit accumulators (``accumulator_dtype``
    "int8", whose requantization is always stochastic); `inner` itself otherwise."""
    if not (stochastic_rounding or quantized.is_int8_dtype(accumulator_dtype)):
        return inner
    return wrap(caller, seed, inner, round_weights=stochastic_rounding)
