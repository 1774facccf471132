"""Per-coordinate FTRL-Proximal (McMahan et al. 2013): `FtrlState`, `ftrl`."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, cast

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


class FtrlState(NamedTuple):
    """State of `ftrl`.

    Attributes:
      count: int32 number of steps taken (the schedule's argument).
      slots: n and z: the tuple ``(n, z)`` of two trees like the parameters
        (default, ``stack_slots=False``), or with ``stack_slots=True`` a
        1-tuple holding one tree like the parameters whose leaves have one
        more, last axis of 2 (``[..., 0]`` is n, ``[..., 1]`` is z): a table
        row's state is then one contiguous run.
      sum_of_squares: (read-only view) n, the sum of squared gradients
        (started at tau); Keras calls it the accumulator.
      linear: (read-only view) z, the "linear" term: gradients minus
        sigma-weighted parameters.

    0.2 kept n and z as two fields, ``sum_of_squares`` and ``linear``;
    `adagrad_jax.restore_structure` reads a checkpoint of that layout.
    """

    count: jax.Array  # type: ignore[assignment]  # (shadows tuple.count, as in optax)
    slots: tuple

    @property
    def sum_of_squares(self) -> optax.Updates:
        return slots.slot_tree(self.slots, 0)

    @property
    def linear(self) -> optax.Updates:
        return slots.slot_tree(self.slots, 1)


def _power(x: jax.Array, p: Any) -> jax.Array:
    """x ** p for p = -learning_rate_power >= 0; sqrt for the usual 0.5, 1 for 0."""
    number = checks.python_number(p)
    if number == 0.5:
        return jnp.sqrt(x)
    if number == 0.0:
        return jnp.ones_like(x)
    return jnp.power(x, jnp.asarray(p, x.dtype))


def ftrl_rule(
    lr: Any,
    p: Any,
    l1: Any,
    l2: Any,
    l2_shrinkage: Any,
    beta: Any,
    stacked: bool = False,
    multiply_linear_by_learning_rate: bool = False,
):
    """The leaf rule of `ftrl` (see `tables/engine.py`); `stacked`: the slots' layout;
    `multiply_linear_by_learning_rate`: z is kept times lr (TF's option)."""
    shrinkage = not checks.is_zero_constant(l2_shrinkage)
    times_lr = multiply_linear_by_learning_rate

    def rule(g, state, w, rounder=None):
        n, z = slots.unpack(state, 2, stacked)
        dtype = n.dtype
        lr_t = jnp.asarray(lr).astype(dtype)
        w_acc = w.astype(dtype)
        g_acc = g.astype(dtype)
        g_shrunk = g_acc + jnp.asarray(l2_shrinkage, dtype) * w_acc if shrinkage else g_acc
        if quantized.is_int8(n):  # n in 8 bits, requantized stochastically; z float32
            # The step reads n as stored, so that z's sigma terms telescope over the
            # stored values (the rounding noise does not build up in z).
            old_n = quantized.dequantize(n)
            stored_n = quantized.add_squares(n, g, rounder.bits(g.shape, slot=0))[1]
            new_n = quantized.dequantize(stored_n)
        else:
            old_n = n
            new_n = stored_n = round_sum(rounder, n, squared_magnitude(g, dtype), slot=0)
        root_step = _power(new_n, p) - _power(old_n, p)
        if times_lr:
            z = round_sum(rounder, z, lr_t * g_shrunk - root_step * w_acc, slot=1)
        elif not rounds(rounder, z):  # 0.2's order of operations: its runs resume exactly
            z = z + g_shrunk - root_step / lr_t * w_acc
        else:
            z = round_sum(rounder, z, g_shrunk - root_step / lr_t * w_acc, slot=1)
        # The same root again, written so that XLA does not merge the two: merged,
        # XLA:CPU (no multi-output fusion) writes it to a table-sized temporary
        # that both loops read; apart, each loop computes it (maximum(n, 0) is
        # n, as n >= 0). One 64 MiB temporary fewer at 16M floats: 63 -> 43 ms.
        new_root = _power(jnp.maximum(new_n, jnp.zeros((), dtype)), p)
        beta_ = jnp.asarray(beta, dtype)
        if times_lr:  # Numerator and denominator of the other form, times lr.
            quadratic = new_root + beta_ + lr_t * jnp.asarray(l2, dtype)
            l1_ = lr_t * jnp.asarray(l1, dtype)
        else:
            quadratic = (new_root + beta_) / lr_t + jnp.asarray(l2, dtype)
            l1_ = jnp.asarray(l1, dtype)
        shrunk = jnp.where(jnp.abs(z) > l1_, jnp.sign(z) * l1_ - z, jnp.zeros((), dtype))
        # Where quadratic is 0 (no gradient yet, tau = beta = l2 = 0) w stays. No
        # constant compiles the guard out: a schedule's lr_t = 0 makes it 0/0.
        new_w = numerics.guarded_divide(shrunk, quadratic, fallback=w_acc)
        update = (new_w - w_acc).astype(update_dtype(rounder, g))
        return update, slots.pack((stored_n, z), stacked)

    return rule


def _check_power(caller: str, learning_rate_power: Any) -> None:
    if isinstance(learning_rate_power, jax.Array):
        return  # Possibly traced (inject_hyperparams).
    number = checks.python_number(learning_rate_power)
    if number is None:
        raise TypeError(
            f"{caller}(learning_rate_power={learning_rate_power!r}): learning_rate_power"
            " must be a number."
        )
    if not math.isfinite(number) or number > 0:
        raise ValueError(
            f"{caller}(learning_rate_power={learning_rate_power!r}): learning_rate_power"
            " must be finite and <= 0 (-0.5 is Adagrad's 1/sqrt(n); 0 is a fixed"
            " learning rate)."
        )


@checks.checked_arguments
@shared_args
def ftrl(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    *,
    learning_rate_power: jax.typing.ArrayLike = -0.5,
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    l1: jax.typing.ArrayLike = 0.0,
    l2: jax.typing.ArrayLike = 0.0,
    l2_shrinkage: jax.typing.ArrayLike = 0.0,
    beta: jax.typing.ArrayLike = 0.0,
    warm_start: bool = True,
    accumulator_dtype: Any = None,
    stack_slots: bool = False,
    pad_id: int | None = None,
    out_of_range: str = "drop",
    unique_rows: int | None = None,
    nonfinite: str = "propagate",
    multiply_linear_by_learning_rate: bool = False,
    allow_zero_accumulator: bool = False,
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformation:
    r"""FTRL-Proximal: follow the regularized leader with Adagrad's per-coordinate rates.

    McMahan et al.'s algorithm 1 with Keras' generalisations. With
    p = -learning_rate_power (0.5 by default, Adagrad's rate) and
    lr_t = lr(count), for every coordinate at step t = 1, 2, ...::

        n_0     = initial_accumulator_value                         (tau)
        z_0     = -(tau^p + beta) / lr_0 * w_0    (warm_start; 0 otherwise)
        g'      = g_t + l2_shrinkage * w_t                          (shrinkage L2)
        n_t     = n_{t-1} + g_t^2
        sigma   = (n_t^p - n_{t-1}^p) / lr_t
        z_t     = z_{t-1} + g' - sigma * w_t
        q       = (n_t^p + beta) / lr_t + l2
        w_{t+1} = 0                              if |z_t| <= l1    (exactly 0.0)
                = -(z_t - sign(z_t) * l1) / q    otherwise
        update  = w_{t+1} - w_t

    With ``multiply_linear_by_learning_rate=True`` (TensorFlow's
    ``multiply_linear_by_lr``) the state keeps Z = lr * z instead, updated
    and used as TF's kernels do::

        Z_0     = -(tau^p + beta) * w_0                   (warm_start; 0 otherwise)
        Z_t     = Z_{t-1} + lr_t * g' - (n_t^p - n_{t-1}^p) * w_t
        Q       = n_t^p + beta + lr_t * l2
        w_{t+1} = 0                                  if |Z_t| <= lr_t * l1
                = -(Z_t - sign(Z_t) * lr_t * l1) / Q  otherwise

    With a constant learning rate both forms give the same weights (Z = lr
    * z; equal up to rounding). They differ when lr changes: each step's
    gradient enters Z at that step's rate, so a schedule acts as in TF.

    that is, w_{t+1} = argmin_w z_t * w + l1 * |w| + (q / 2) * w^2: the paper's
    minimiser of the linearised losses, L1 = l1 * |w|, L2 = (l2 / 2) * w^2 and
    the proximal terms sigma_s / 2 * (w - w_s)^2. Where q = 0 (no gradient yet
    and tau = beta = l2 = 0) w stays. Arithmetic is done in the accumulator's
    dtype (float32 for bfloat16 and float16 parameters).

    ``l1`` is the strength on the summed loss of all steps seen so far (FTRL
    minimises the sum, so l1 does not grow with t as in `adagrad_da`, where
    the strength is per step).

    Starting point: ``warm_start=True`` (default) centres the initial proximal
    term (tau^p + beta) / (2 lr_0) * (w - w_0)^2 at the parameters passed to
    `init`, so that with no gradient and no regularization w stays w_0, and a
    first gradient takes an Adagrad step from w_0. ``warm_start=False``
    centres it at 0, as TF and Keras do (z_0 = 0): the first step forgets w_0
    in the tau^p part (with tau = 0 and beta = 0 the two agree).

    Embedding tables: a `RowSparse` gradient updates only the rows it touches
    (deduplicated; padding and out-of-range ids skipped, as in
    `adagrad`) and the update comes back as a `RowSparse` (apply it
    with `adagrad_jax.apply_updates`); this is TF's and Keras' lazy sparse
    rule. Densely, a zero gradient row still moves where w differs from the
    value (z, n) give: at the first step when regularization (or
    ``warm_start=False``) pulls w_0, at every step with ``l2_shrinkage`` > 0
    or a changing learning rate. Lazily, untouched rows keep their value.

    Args:
      learning_rate: lr, a number > 0 or an optax schedule of the step count
        (0 at the first step). Default 0.01.
      learning_rate_power: -p (<= 0). Default -0.5; 0 gives a fixed rate.
      {initial_accumulator_value}
        Here that sum is n. Must be >= 0. Default 0.1.
      l1: L1 strength (>= 0). Default 0.
      l2: L2 strength (>= 0), the paper's lambda_2: (l2 / 2) * w^2. Default 0.
      l2_shrinkage: strength (>= 0) of an L2 term (l2_shrinkage / 2) * w^2
        added to the loss, so its gradient joins g' (but not n). Default 0.
      beta: the paper's beta (>= 0), added to n^p. Default 0.
      warm_start: centre the initial proximal term at the initial parameters
        (True) or at 0 (False, TF/Keras). Default True.
      multiply_linear_by_learning_rate: keep the linear slot multiplied by the
        learning rate (Z = lr * z, the second rule above), as TF's
        ``multiply_linear_by_lr`` and TPU embeddings'
        ``multiply_linear_by_learning_rate`` do. Default False.
      allow_zero_accumulator: TF's TPU-embedding flag for accumulators that
        start at 0. Here every accumulator may start at 0 whatever its value
        (``initial_accumulator_value=0`` is accepted and a zero denominator is
        guarded: w stays), so the flag changes no number; it is accepted so
        that a TPU configuration carries over. TF's current TPU code ignores
        it too (optimization_parameters.proto marks it deprecated: "zero or
        near-zero accumulator values are now always supported"). Default
        False.
      accumulator_dtype: real floating dtype of n, z and the arithmetic, or
        ``"int8"`` (n in 8 bits, z and the arithmetic in float32; with
        ``stack_slots=False``; unlike the other optimizers' 8-bit sums, the
        step reads n as stored, before and after its update, so that z's
        sigma terms telescope). Default None: float32 for bfloat16/float16
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
      An `optax.GradientTransformation` whose state is an `FtrlState`. Its
      `update` always needs `params`.

    Raises:
      ValueError: at construction for a non-positive learning rate, a positive
        learning_rate_power, or a negative or non-finite number; at trace time
        when `update` gets no `params`, or gradients whose tree or shapes
        differ from the state's (naming the path).
      TypeError: at `init` for integer, boolean or complex parameter leaves.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> import adagrad_jax
      >>> params = jnp.array([0.0, 0.0])
      >>> tx = adagrad_jax.ftrl(learning_rate=1.0, initial_accumulator_value=0.0, l1=1.0)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([3.0, 0.5]), state, params)
      >>> optax.apply_updates(params, updates)   # -(3 - 1) / sqrt(9); |0.5| <= l1
      Array([-0.6666667,  0.       ], dtype=float32)

    References:
      McMahan et al., "Ad Click Prediction: a View from the Trenches", KDD
      2013, algorithm 1; McMahan, "Follow-the-Regularized-Leader and Mirror
      Descent", AISTATS 2011.

    Differences from other libraries:
      TensorFlow's and Keras' ``l2_regularization_strength`` is half the
      paper's lambda_2 (their denominator has ``2 * l2``), and their
      ``l2_shrinkage_regularization_strength`` adds ``2 * s * w`` to the
      gradient; here ``l2`` and ``l2_shrinkage`` are the paper's coefficients
      of (1/2) w^2, so Keras' (l2, s) are our (2 l2, 2 s).
      `adagrad_jax.compat.keras_ftrl` takes Keras' names and converts them,
      with ``warm_start=False``.
    """
    caller = "ftrl"
    checks.check_number(caller, "learning_rate", learning_rate, positive=True, allow_schedule=True)
    _check_power(caller, learning_rate_power)
    checks.check_nonnegative(
        caller,
        initial_accumulator_value=initial_accumulator_value,
        l1=l1,
        l2=l2,
        l2_shrinkage=l2_shrinkage,
        beta=beta,
    )
    warm_start = checks.check_bool(caller, "warm_start", warm_start)
    stack_slots = checks.check_bool(caller, "stack_slots", stack_slots)
    accumulator_dtype = checks.check_accumulator_dtype(
        caller,
        accumulator_dtype,
        int8_refused=checks.int8_refused_when_stacked(stack_slots, "n and z"),
    )
    check_id_flags(caller, pad_id, out_of_range, unique_rows)
    nonfinite_policy.check(caller, nonfinite)
    times_lr = checks.check_bool(
        caller, "multiply_linear_by_learning_rate", multiply_linear_by_learning_rate
    )
    checks.check_bool(caller, "allow_zero_accumulator", allow_zero_accumulator)
    stochastic_rounding = rounding.check_arguments(caller, stochastic_rounding, seed)
    p = -cast(Any, learning_rate_power)  # A number or a JAX scalar (checked above).
    z_dtype = slots.companion_dtype(accumulator_dtype)

    def init_fn(params):
        checks.check_real_params(caller, params)
        sums = init_sum_of_squares(caller, params, initial_accumulator_value, accumulator_dtype)
        if warm_start:
            lr0 = numerics.learning_rate_at(learning_rate, slots.init_count())

            def linear(n, w):
                if quantized.is_int8(n):
                    n = quantized.dequantize(n)
                if isinstance(w, jax.ShapeDtypeStruct):
                    return jnp.zeros_like(n)
                lr0_ = jnp.asarray(lr0).astype(n.dtype)
                scale = _power(n, p) + jnp.asarray(beta, n.dtype)
                if not times_lr:
                    scale = scale / lr0_
                return -scale * w.astype(n.dtype)

            linears = jax.tree.map(linear, sums, params, is_leaf=quantized.is_int8)
        else:
            linears = init_sum_of_squares(caller, params, 0.0, z_dtype)
        return FtrlState(slots.init_count(), slots.layout_slots((sums, linears), stack_slots))

    def update_fn(updates, state, params=None, *, rounding_key=None, **extra_args):
        del extra_args
        slots.check_layout(caller, state.slots, stack_slots, 2)
        lr = numerics.learning_rate_at(learning_rate, state.count)
        rule = ftrl_rule(lr, p, l1, l2, l2_shrinkage, beta, stack_slots, times_lr)
        updates, new_slots = map_rule(
            caller,
            rule,
            updates,
            state.slots,
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
        return updates, FtrlState(optax.safe_increment(state.count), new_slots)

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    tx = rounding.optional(
        caller, stochastic_rounding, seed, tx, accumulator_dtype=accumulator_dtype
    )
    return nonfinite_policy.wrap(caller, nonfinite, tx, skips_inside=True)
