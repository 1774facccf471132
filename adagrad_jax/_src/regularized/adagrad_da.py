"""Adagrad dual averaging (regularized dual averaging): `AdagradDAState`, `adagrad_da`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.core import checks, nonfinite_policy, numerics, quantized, slots
from adagrad_jax._src.core.docs import shared_args
from adagrad_jax._src.core.numerics import squared_magnitude
from adagrad_jax._src.core.rounding import round_sum, update_dtype
from adagrad_jax._src.core.slots import init_sum_of_squares
from adagrad_jax._src.tables import stochastic_rounding as rounding
from adagrad_jax._src.tables.engine import map_rule
from adagrad_jax._src.tables.ids import check_id_flags


class AdagradDAState(NamedTuple):
    """State of `adagrad_da`.

    Attributes:
      count: int32 number of steps taken; t = count + 1 at the next step.
      slots: z and G: the tuple ``(z, G)`` of two trees like the parameters
        (default, ``stack_slots=False``), or with ``stack_slots=True`` a
        1-tuple holding one tree like the parameters whose leaves have one
        more, last axis of 2 (``[..., 0]`` is z, ``[..., 1]`` is G): a table
        row's state is then one contiguous run.
      initial_params: w_0, the parameters given to `init` (in their own dtype),
        the centre of the proximal term, read but never written; None with
        ``warm_start=False``.
      gradient_sum: (read-only view) z, the sum of all gradients.
      sum_of_squares: (read-only view) G, the sum of squared gradients
        (started at tau).

    0.2 kept z and G as two fields, ``gradient_sum`` and ``sum_of_squares``;
    `adagrad_jax.restore_structure` reads a checkpoint of that layout.
    """

    count: jax.Array  # type: ignore[assignment]  # (shadows tuple.count, as in optax)
    slots: tuple
    initial_params: optax.Params | None

    @property
    def gradient_sum(self) -> optax.Updates:
        return slots.slot_tree(self.slots, 0)

    @property
    def sum_of_squares(self) -> optax.Updates:
        return slots.slot_tree(self.slots, 1)


def adagrad_da_rule(
    lr: Any,
    t: jax.Array,
    l1: Any,
    l2: Any,
    eps: Any,
    tau: Any,
    warm_start: bool,
    stacked: bool = False,
):
    """The leaf rule of `adagrad_da` (see `tables/engine.py`); `stacked`: the slots' layout."""

    def rule(g, state, w, rounder=None):
        z, s = slots.unpack(state, 2, stacked)
        dtype = s.dtype
        z = round_sum(rounder, z, g.astype(dtype), slot=0)
        coded = quantized.is_int8(s)
        if coded:  # G in 8 bits, requantized stochastically; z float32
            s, stored_s = quantized.add_squares(s, g, rounder.bits(g.shape, slot=1))
        else:
            s = stored_s = round_sum(rounder, s, squared_magnitude(g, dtype), slot=1)
        h = jnp.sqrt(s) + jnp.asarray(eps, dtype)
        lr_t = jnp.asarray(lr).astype(dtype)
        t_ = t.astype(dtype)
        centre = state[-1].astype(dtype) if warm_start else jnp.zeros((), dtype)
        numerator = h * centre - lr_t * z
        denominator = h + lr_t * jnp.asarray(l2, dtype) * t_
        shrunk = numerics.soft_threshold(numerator, lr_t * jnp.asarray(l1, dtype) * t_)
        # Nothing accumulated and no l2 (tau = eps = 0): stay at the centre. The
        # guard is compiled out when tau or eps alone keeps h normal (h >= sqrt(tau);
        # not for a coded G, which may decode to 0).
        new_w = numerics.guarded_divide(
            shrunk, denominator, keeps_normal=(eps,) if coded else (tau, eps), fallback=centre
        )
        update = (new_w - w.astype(dtype)).astype(update_dtype(rounder, g))
        return update, slots.pack((z, stored_s), stacked)  # w_0 (state[-1]) is read only.

    return rule


def _copy_params(params: Any) -> Any:
    """A copy of the parameters (zeros for `jax.ShapeDtypeStruct`s: abstract targets)."""

    def leaf(p):
        if isinstance(p, jax.ShapeDtypeStruct):
            return jnp.zeros(p.shape, p.dtype, device=p.sharding)
        return jnp.array(p, copy=True)

    return jax.tree.map(leaf, params)


@checks.checked_arguments
@shared_args
def adagrad_da(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    *,
    l1: jax.typing.ArrayLike = 0.0,
    l2: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 0.0,
    warm_start: bool = True,
    accumulator_dtype: Any = None,
    stack_slots: bool = False,
    pad_id: int | None = None,
    out_of_range: str = "drop",
    unique_rows: int | None = None,
    nonfinite: str = "propagate",
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformation:
    r"""Adagrad dual averaging: w is recomputed from the sum of all gradients.

    Regularized dual averaging with Adagrad's proximal term. For every
    coordinate, at step t = 1, 2, ... (count = t - 1)::

        z_t     = z_{t-1} + g_t                     z_0 = 0
        G_t     = G_{t-1} + g_t^2                   G_0 = initial_accumulator_value
        h_t     = sqrt(G_t) + eps
        w_{t+1} = argmin_w  <z_t, w> + l1 * t * |w| + (l2 * t / 2) * w^2
                            + h_t / (2 * lr_t) * (w - w_0)^2
                = sign(v) * max(|v| - lr_t * l1 * t, 0) / (h_t + lr_t * l2 * t),
                  with v = h_t * w_0 - lr_t * z_t
        update  = w_{t+1} - w_t

    where lr_t = lr(count). The L1 and L2 strengths act on the summed loss,
    so they grow with t: l1 is a per-step strength, like the regularizer of
    an average loss. Coordinates with |v| <= lr_t * l1 * t are exactly 0.0.
    Where h_t + lr_t * l2 * t is 0 (no gradient yet, tau = eps = l2 = 0),
    w stays at its centre.

    Starting point: ``warm_start=True`` (default) centres the proximal term at
    w_0, the parameters passed to `init`, which the state keeps: training
    continues from loaded or randomly initialised weights (with no gradient,
    w stays w_0). ``warm_start=False`` centres it at 0, as TF1's
    ``AdagradDAOptimizer`` does: the first step forgets w_0 and every w is a
    function of (z, G, t) alone. The two agree when w_0 = 0.

    Embedding tables: a `RowSparse` gradient updates only the rows it touches
    (deduplicated; padding and out-of-range ids skipped, as in
    `adagrad`), with the step's global t, and the update comes back as
    a `RowSparse` (apply it with `adagrad_jax.apply_updates`). This is TF's
    lazy sparse rule. Densely, every coordinate is recomputed at every step,
    so a row with no gradient still moves as t grows (its L1 threshold and L2
    term grow with t); lazily it keeps its value until it is touched, and then
    jumps to the dense value for its (z, G) at that t.

    Args:
      learning_rate: lr, a number >= 0 or an optax schedule of the step count.
        Default 0.01.
      {initial_accumulator_value}
        Must be >= 0. Default 0.1 (TF1's).
      l1: per-step L1 strength (>= 0). Default 0.
      l2: per-step L2 strength (>= 0), the objective gains (l2 / 2) * w^2 per
        step. Default 0.
      eps: added to the square root (>= 0). Default 0.
      warm_start: centre the proximal term at the initial parameters (True)
        or at 0 (False, TF1). Default True.
      accumulator_dtype: real floating dtype of z, G and the arithmetic, or
        ``"int8"`` (G in 8 bits, z and the arithmetic in float32; with
        ``stack_slots=False``). Default None: float32 for bfloat16/float16
        parameters, the parameter's dtype otherwise.
        {int8}
      {stack_slots}
      {pad_id}
      {out_of_range}
      {unique_rows}
      {nonfinite}
      {stochastic_rounding}
      {seed}

    Returns:
      An `optax.GradientTransformation` whose state is an `AdagradDAState`.
      Its `update` always needs `params`.

    Raises:
      ValueError: at construction for a negative or non-finite number; at
        trace time when `update` gets no `params`, or gradients whose tree or
        shapes differ from the state's (naming the path).
      TypeError: at `init` for integer, boolean or complex parameter leaves.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> import adagrad_jax
      >>> params = jnp.array([0.0, 0.0])
      >>> tx = adagrad_jax.adagrad_da(learning_rate=1.0, initial_accumulator_value=0.0, l1=0.5)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([2.0, 0.25]), state, params)
      >>> optax.apply_updates(params, updates)   # -(2 - 0.5) / sqrt(4); |0.25| <= 0.5
      Array([-0.75,  0.  ], dtype=float32)

    References:
      Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online
      Learning and Stochastic Optimization", JMLR 12, 2011, section 3
      (primal-dual subgradient update); Xiao, "Dual Averaging Methods for
      Regularized Stochastic Learning and Online Optimization", JMLR 11, 2010.

    Differences from other libraries:
      TF1's ``AdagradDAOptimizer`` is ``warm_start=False, eps=0`` with t its
      global step; `adagrad_jax.compat.tf1_adagrad_da` reproduces it. optax,
      PyTorch and Keras 3 have no dual-averaging Adagrad.
    """
    caller = "adagrad_da"
    checks.check_number(caller, "learning_rate", learning_rate, allow_schedule=True)
    checks.check_nonnegative(
        caller, initial_accumulator_value=initial_accumulator_value, l1=l1, l2=l2, eps=eps
    )
    warm_start = checks.check_bool(caller, "warm_start", warm_start)
    stack_slots = checks.check_bool(caller, "stack_slots", stack_slots)
    accumulator_dtype = checks.check_accumulator_dtype(
        caller,
        accumulator_dtype,
        int8_refused=checks.int8_refused_when_stacked(stack_slots, "z and G"),
    )
    check_id_flags(caller, pad_id, out_of_range, unique_rows)
    nonfinite_policy.check(caller, nonfinite)
    stochastic_rounding = rounding.check_arguments(caller, stochastic_rounding, seed)

    def init_fn(params):
        checks.check_real_params(caller, params)
        sums = init_sum_of_squares(caller, params, initial_accumulator_value, accumulator_dtype)
        gradient_sums = init_sum_of_squares(
            caller, params, 0.0, slots.companion_dtype(accumulator_dtype)
        )
        return AdagradDAState(
            count=slots.init_count(),
            slots=slots.layout_slots((gradient_sums, sums), stack_slots),
            initial_params=_copy_params(params) if warm_start else None,
        )

    def update_fn(updates, state, params=None, *, rounding_key=None, **extra_args):
        del extra_args
        slots.check_layout(caller, state.slots, stack_slots, 2)
        lr = numerics.learning_rate_at(learning_rate, state.count)
        t = optax.safe_increment(state.count)
        rule = adagrad_da_rule(
            lr, t, l1, l2, eps, initial_accumulator_value, warm_start, stack_slots
        )
        read = (*state.slots, state.initial_params) if warm_start else state.slots
        updates, new_slots = map_rule(
            caller,
            rule,
            updates,
            read,
            params,
            read_params=True,
            pad_id=pad_id,
            out_of_range=out_of_range,
            unique_rows=unique_rows,
            nonfinite=nonfinite,
            state_name="state.slots[0]",
            stacked=stack_slots,
            rounding=rounding_key,
        )
        return updates, AdagradDAState(
            count=t,
            slots=tuple(new_slots[: len(state.slots)]),
            initial_params=state.initial_params,
        )

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    tx = rounding.optional(
        caller, stochastic_rounding, seed, tx, accumulator_dtype=accumulator_dtype
    )
    return nonfinite_policy.wrap(caller, nonfinite, tx, skips_inside=True)
