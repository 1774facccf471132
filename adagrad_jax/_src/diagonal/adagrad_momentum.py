"""Adagrad with momentum as TPU embeddings train tables: `adagrad_momentum`, its preconditioner.

Two slots per coordinate (a, m) in ``slots``, apart or stacked (`core/slots.py`), and one
leaf rule, `adagrad_momentum_rule`, for dense leaves and table rows (`tables/engine.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.core import checks, nonfinite_policy, numerics, quantized, slots
from adagrad_jax._src.core.docs import shared_args
from adagrad_jax._src.core.numerics import LOW_PRECISION, squared_magnitude
from adagrad_jax._src.core.rounding import update_dtype
from adagrad_jax._src.core.slots import init_sum_of_squares
from adagrad_jax._src.tables import stochastic_rounding as rounding
from adagrad_jax._src.tables.apply import on_row_values
from adagrad_jax._src.tables.engine import map_rule
from adagrad_jax._src.tables.ids import check_id_flags


class ScaleByAdagradMomentumState(NamedTuple):
    """State of `scale_by_adagrad_momentum`.

    Attributes:
      slots: ``(a, m)``, two trees like the parameters (``stack_slots=False``),
        or a 1-tuple of one tree whose leaves have a last axis of 2
        (``[..., 0]`` is a, ``[..., 1]`` is m; ``stack_slots=True``), in the
        accumulator's dtype (float32 for bfloat16/float16 parameters).
      accumulator: (read-only view) a, the sum (``beta2=1``) or exponential
        average (``beta2 < 1``) of squared gradients, started at tau.
      momentum: (read-only view) m, the momentum of the scaled gradients.
    """

    slots: tuple

    @property
    def accumulator(self) -> optax.Updates:
        return slots.slot_tree(self.slots, 0)

    @property
    def momentum(self) -> optax.Updates:
        return slots.slot_tree(self.slots, 1)


@dataclasses.dataclass(frozen=True)
class AdagradMomentumHyperparameters:
    """The arguments of `scale_by_adagrad_momentum`, by name, as a constructor passes them on."""

    momentum: Any
    beta2: Any
    exponent: Any
    eps: Any
    use_nesterov: bool
    initial_accumulator_value: Any
    initial_momentum_value: Any
    accumulator_dtype: Any
    stack_slots: bool
    pad_id: int | None
    out_of_range: str
    unique_rows: int | None
    nonfinite: str


def check_hyperparameters(
    caller: str, h: AdagradMomentumHyperparameters
) -> AdagradMomentumHyperparameters:
    """Checks the arguments `adagrad_momentum` and `scale_by_adagrad_momentum` share."""
    checks.check_number(caller, "momentum", h.momentum)
    checks.check_in_range(caller, "momentum", h.momentum, lambda x: x < 1, "in [0, 1)")
    checks.check_number(caller, "beta2", h.beta2, positive=True)
    checks.check_in_range(
        caller, "beta2", h.beta2, lambda x: x <= 1, "in (0, 1] (1: a sum; < 1: an average)"
    )
    checks.check_number(caller, "exponent", h.exponent, positive=True)
    checks.check_number(caller, "eps", h.eps)
    checks.check_number(caller, "initial_accumulator_value", h.initial_accumulator_value)
    checks.check_signed_number(caller, "initial_momentum_value", h.initial_momentum_value)
    use_nesterov = checks.check_bool(caller, "use_nesterov", h.use_nesterov)
    stack_slots = checks.check_bool(caller, "stack_slots", h.stack_slots)
    accumulator_dtype = checks.check_accumulator_dtype(
        caller,
        h.accumulator_dtype,
        int8_refused=checks.int8_refused_when_stacked(stack_slots, "a and m"),
    )
    check_id_flags(caller, h.pad_id, h.out_of_range, h.unique_rows)
    nonfinite_policy.check(caller, h.nonfinite)
    return dataclasses.replace(
        h,
        use_nesterov=use_nesterov,
        stack_slots=stack_slots,
        accumulator_dtype=accumulator_dtype,
    )


def _root_floor(h: AdagradMomentumHyperparameters) -> float | None:
    """A lower bound of (a_t + eps)^(1/exponent) when every constant is a Python number.

    a_t >= tau with beta2 = 1 (a only grows); with beta2 < 1 it may decay
    towards 0, and only eps remains. Halved, against rounding.
    """
    beta2, exponent, eps, tau = (
        checks.python_number(x) for x in (h.beta2, h.exponent, h.eps, h.initial_accumulator_value)
    )
    if beta2 is None or exponent is None or eps is None or tau is None:
        return None
    base = max(tau, eps) if beta2 == 1 else eps
    return 0.5 * base ** (1.0 / exponent)


def _store(rounder: Any, x: jax.Array, dtype: Any, slot: int) -> jax.Array:
    """x in the state's dtype: rounded to nearest, or stochastically with a rounder."""
    return x.astype(dtype) if rounder is None else rounder.round(x, dtype, slot)


def _average(h: AdagradMomentumHyperparameters, beta2: float | None, dtype: Any) -> tuple:
    """(decay, weight) of a' = decay * a + weight * g^2: (None, None) for a sum (beta2 = 1),
    else (beta2, 1 - beta2); `beta2` is h.beta2 as a Python number, None for a JAX
    value (inject_hyperparams), which may be 1: then (1, 1), a sum."""
    if beta2 == 1.0:
        return None, None
    b2, one = jnp.asarray(h.beta2).astype(dtype), jnp.ones((), dtype)
    if beta2 is None:
        average = b2 != one
        return jnp.where(average, b2, one), jnp.where(average, one - b2, one)
    return b2, one - b2


def adagrad_momentum_rule(h: AdagradMomentumHyperparameters):
    """The leaf rule of `scale_by_adagrad_momentum` (see `tables/engine.py`)."""
    beta2 = checks.python_number(h.beta2)  # None: a JAX value (inject_hyperparams)
    exponent = checks.python_number(h.exponent)
    # (A coded a may decode to 0: tau keeps no root normal.)
    floor = None if quantized.is_int8_dtype(h.accumulator_dtype) else _root_floor(h)

    def rule(g, state, w, rounder=None):
        del w
        a, m = slots.unpack(state, 2, h.stack_slots)
        dtype = a.dtype
        # With stochastic rounding a low-precision state is computed in float32, rounded once.
        wide = jnp.float32 if rounder is not None and dtype in LOW_PRECISION else dtype
        decay, weight = _average(h, beta2, wide)
        if quantized.is_int8(a):  # a in 8 bits, requantized stochastically; m float32
            bits = rounder.bits(g.shape, slot=0)
            new_a, stored_a = quantized.add_squares(a, g, bits, decay=decay, weight=weight)
        else:
            a, sq = a.astype(wide), squared_magnitude(g, wide)
            new_a = (a if decay is None else decay * a) + (sq if weight is None else weight * sq)
            stored_a = _store(rounder, new_a, dtype, 0)
        base = new_a + jnp.asarray(h.eps).astype(wide)
        normal_root = floor is not None and checks.is_positive_in(floor, wide)
        if not normal_root:  # A subnormal base counts as 0 (XLA may flush it) -> s = 0.
            base = jnp.where(base >= jnp.finfo(wide).tiny, base, jnp.zeros((), wide))
        inverse = jnp.ones((), wide) / jnp.asarray(h.exponent).astype(wide)
        root = jnp.sqrt(base) if exponent == 2.0 else jnp.power(base, inverse)
        keeps = (floor,) if normal_root else ()
        s = numerics.guarded_divide(g.astype(wide), root, keeps_normal=keeps)
        beta1 = jnp.asarray(h.momentum).astype(wide)
        new_m = beta1 * m.astype(wide) + s
        d = beta1 * new_m + s if h.use_nesterov else new_m
        new_slots = (stored_a, _store(rounder, new_m, m.dtype, 1))
        # Under stochastic rounding a low-precision weight's update stays float32.
        return d.astype(update_dtype(rounder, g)), slots.pack(new_slots, h.stack_slots)

    return rule


def adagrad_momentum_preconditioner(
    caller: str, h: AdagradMomentumHyperparameters
) -> optax.GradientTransformationExtraArgs:
    """`scale_by_adagrad_momentum` without the `nonfinite` wrapper; errors name `caller`."""
    rule = adagrad_momentum_rule(h)

    def init_fn(params):
        checks.check_real_params(caller, params, subject=f"{caller}, as on TPU embeddings, is")
        a = init_sum_of_squares(caller, params, h.initial_accumulator_value, h.accumulator_dtype)
        m_dtype = slots.companion_dtype(h.accumulator_dtype)
        m = init_sum_of_squares(caller, params, h.initial_momentum_value, m_dtype)
        return ScaleByAdagradMomentumState(slots.layout_slots((a, m), h.stack_slots))

    def update_fn(updates, state, params=None, *, rounding_key=None, **extra_args):
        del extra_args
        slots.check_layout(caller, state.slots, h.stack_slots, 2)
        updates, new_slots = map_rule(
            caller,
            rule,
            updates,
            state.slots,
            params,
            pad_id=h.pad_id,
            out_of_range=h.out_of_range,
            unique_rows=h.unique_rows,
            nonfinite=h.nonfinite,
            state_name="state.slots[0]",
            stacked=h.stack_slots,
            rounding=rounding_key,
        )
        return updates, ScaleByAdagradMomentumState(new_slots)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@checks.checked_arguments
@shared_args
def scale_by_adagrad_momentum(
    momentum: jax.typing.ArrayLike = 0.9,
    *,
    beta2: jax.typing.ArrayLike = 1.0,
    exponent: jax.typing.ArrayLike = 2.0,
    eps: jax.typing.ArrayLike = 1e-10,
    use_nesterov: bool = False,
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    initial_momentum_value: jax.typing.ArrayLike = 0.0,
    accumulator_dtype: Any = None,
    stack_slots: bool = False,
    pad_id: int | None = None,
    out_of_range: str = "drop",
    unique_rows: int | None = None,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    r"""Adagrad-scaled gradients with momentum: `adagrad_momentum` without the learning rate.

    Returns d_t of `adagrad_momentum`'s rule (whose docstring has the whole
    rule, its zero guard and tables): m_t, or momentum * m_t + s_t with
    ``use_nesterov``, where s_t = g_t * (a_t + eps)^(-1/exponent).

    Args:
      momentum: beta1 in [0, 1). Default 0.9.
      beta2: in (0, 1]: 1 sums the squared gradients, < 1 averages them.
        Default 1.
      exponent: k > 0; the step is scaled by (a + eps)^(-1/k). Default 2.
      eps: added to a inside the power (>= 0). Default 1e-10.
      use_nesterov: Nesterov's variant, d_t = momentum * m_t + s_t. Default
        False.
      {initial_accumulator_value}
        Here a. Must be >= 0. Default 0.1.
      initial_momentum_value: m_0, any finite number. Default 0.
      accumulator_dtype: real floating dtype of a, m and the arithmetic, or
        ``"int8"`` (a in 8 bits, m and the arithmetic in float32; with
        ``stack_slots=False``). Default None: float32 for bfloat16/float16
        parameters, the parameter's dtype otherwise.
        {int8}
      {stack_slots}
      {pad_id}
      {out_of_range}
      {unique_rows}
      {nonfinite}

    Returns:
      An `optax.GradientTransformation` whose state is a
      `ScaleByAdagradMomentumState` (a `NonfiniteState` around it with a
      skip policy).

    Example:
      >>> import jax.numpy as jnp
      >>> import adagrad_jax
      >>> tx = adagrad_jax.scale_by_adagrad_momentum(
      ...     0.5, initial_accumulator_value=0.0, eps=0.0)
      >>> state = tx.init(jnp.zeros(2))
      >>> d, state = tx.update(jnp.array([3.0, 0.0]), state)
      >>> d        # 3 / sqrt(9) = 1; the zero coordinate stays 0 (guard)
      Array([1., 0.], dtype=float32)
      >>> d, state = tx.update(jnp.array([4.0, 0.0]), state)
      >>> d        # 0.5 * 1 + 4 / sqrt(9 + 16)
      Array([1.3, 0. ], dtype=float32)
      >>> state.accumulator
      Array([25.,  0.], dtype=float32)
    """
    caller = "scale_by_adagrad_momentum"
    h = check_hyperparameters(
        caller,
        AdagradMomentumHyperparameters(
            momentum=momentum,
            beta2=beta2,
            exponent=exponent,
            eps=eps,
            use_nesterov=use_nesterov,
            initial_accumulator_value=initial_accumulator_value,
            initial_momentum_value=initial_momentum_value,
            accumulator_dtype=accumulator_dtype,
            stack_slots=stack_slots,
            pad_id=pad_id,
            out_of_range=out_of_range,
            unique_rows=unique_rows,
            nonfinite=nonfinite,
        ),
    )
    scale = adagrad_momentum_preconditioner(caller, h)
    scale = rounding.optional(caller, False, 0, scale, accumulator_dtype=h.accumulator_dtype)
    return nonfinite_policy.wrap(caller, nonfinite, scale, skips_inside=True)


@checks.checked_arguments
@shared_args
def adagrad_momentum(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    momentum: jax.typing.ArrayLike = 0.9,
    *,
    beta2: jax.typing.ArrayLike = 1.0,
    exponent: jax.typing.ArrayLike = 2.0,
    eps: jax.typing.ArrayLike = 1e-10,
    use_nesterov: bool = False,
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    initial_momentum_value: jax.typing.ArrayLike = 0.0,
    accumulator_dtype: Any = None,
    stack_slots: bool = False,
    pad_id: int | None = None,
    out_of_range: str = "drop",
    unique_rows: int | None = None,
    nonfinite: str = "propagate",
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformation:
    r"""Adagrad with momentum, as TPU embeddings (SparseCore) train their tables.

    For every coordinate of every leaf, at step t = 1, 2, ... (count = t - 1)::

        a_0 = initial_accumulator_value                        (tau, at init)
        m_0 = initial_momentum_value
        a_t = a_{t-1} + g_t^2                       if beta2 == 1   (before use)
            = beta2 * a_{t-1} + (1 - beta2) * g_t^2  if beta2 < 1
        s_t = g_t * (a_t + eps)^(-1/exponent)          (eps inside the power)
        s_t = 0  where  a_t + eps == 0                 (never NaN)
        m_t = momentum * m_{t-1} + s_t                 (no (1 - momentum) factor)
        d_t = m_t                                      (use_nesterov=False)
            = momentum * m_t + s_t                     (use_nesterov=True)
        u_t = -lr(count) * d_t                         (lr outside m)

    without bias correction. The zero guard: where a_t + eps, or its power
    (a_t + eps)^(1/exponent), is below the smallest normal number of the
    accumulator's dtype (0 or subnormal, which XLA may flush to 0), s_t is 0:
    only while every gradient so far was 0 and tau = eps = 0 (or, with
    beta2 < 1, after a decays that far). Arithmetic is done in the
    accumulator's dtype (float32 for bfloat16 and float16 parameters);
    updates come back in the gradient's dtype.

    This is ``optax.chain(scale_by_adagrad_momentum(...),
    on_row_values(optax.scale_by_learning_rate(learning_rate)))``: its state
    is a 2-tuple whose first entry is a `ScaleByAdagradMomentumState`.

    Embedding tables: a `RowSparse` gradient updates only the rows it touches
    (duplicate ids summed first; padding and out-of-range ids skipped, as in
    `adagrad`), and the update comes back as a `RowSparse` (apply it with
    `adagrad_jax.apply_updates`). The rule is lazy, as on TPU embeddings,
    which update only the rows a batch looks up: an untouched row keeps its
    a and m and does not move. Densely, a zero gradient still moves a
    coordinate whose m is not 0 (and decays its m, and its a with
    beta2 < 1), so a table trained row by row differs from one trained on
    dense gradients wherever rows go untouched.

    Args:
      learning_rate: lr, a number >= 0 or an optax schedule of the step count
        (0 at the first step). Default 0.01.
      momentum: beta1 in [0, 1). Default 0.9.
      beta2: in (0, 1]: 1 sums the squared gradients, < 1 averages them.
        Default 1.
      exponent: k > 0; the step is scaled by (a + eps)^(-1/k). Default 2
        (Adagrad's square root).
      eps: added to a inside the power (>= 0). Default 1e-10.
      use_nesterov: Nesterov's variant, d_t = momentum * m_t + s_t. Default
        False.
      {initial_accumulator_value}
        Here a. Must be >= 0. Default 0.1.
      initial_momentum_value: m_0, any finite number. Default 0.
      accumulator_dtype: real floating dtype of a, m and the arithmetic, or
        ``"int8"`` (a in 8 bits, m and the arithmetic in float32; with
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
      An `optax.GradientTransformation` (its state a 2-tuple, wrapped in a
      ``StochasticRoundingState`` with ``stochastic_rounding=True`` and in a
      ``NonfiniteState`` with a skip policy).

    Raises:
      ValueError: at construction, for a momentum outside [0, 1), a beta2
        outside (0, 1], an exponent <= 0, a negative eps, lr or tau, or a
        value that is NaN, infinite or not a scalar; at trace time, for
        gradients whose tree or shapes differ from the state's.
      TypeError: for a hyperparameter that is not a real scalar or a flag
        not a bool; at `init`, for integer, boolean or complex parameters.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> import adagrad_jax
      >>> tx = adagrad_jax.adagrad_momentum(
      ...     learning_rate=0.1, momentum=0.5, initial_accumulator_value=0.0, eps=0.0)
      >>> params = jnp.zeros(2)
      >>> state = tx.init(params)
      >>> for g in (jnp.array([3.0, 0.0]), jnp.array([4.0, 0.0])):
      ...     updates, state = tx.update(g, state, params)
      ...     params = optax.apply_updates(params, updates)
      >>> params   # -0.1 * 1, then -0.1 * (0.5 * 1 + 4 / 5): -0.23 in float32
      Array([-0.22999999,  0.        ], dtype=float32)

      On a table, only the looked-up rows change:

      >>> table = jnp.zeros((3, 2))
      >>> state = tx.init(table)
      >>> g = adagrad_jax.RowSparse(jnp.array([2, 2]), jnp.array([[1.0, 0.0], [2.0, 0.0]]))
      >>> updates, state = tx.update(g, state, table)
      >>> adagrad_jax.apply_updates(table, updates)   # row 2: g = 3, -0.1 * 3 / 3
      Array([[ 0. ,  0. ],
             [ 0. ,  0. ],
             [-0.1,  0. ]], dtype=float32)

    References:
      TensorFlow, tensorflow/core/tpu/kernels/sparse_core_ops_utils.cc,
      ``BuildAdagradMomentumOptimizerComputation`` (the SparseCore rule), and
      tensorflow/python/tpu/tpu_embedding_v2_utils.py, ``AdagradMomentum``;
      jax-tpu-embedding, jax_tpu_embedding/sparsecore/lib/core/primitives/
      sparse_dense_matmul_grad_with_adagrad_momentum.py (its lowering), the
      NumPy reference ``_compute_adagrad_momentum_update`` of its test, and
      jax_tpu_embedding/sparsecore/lib/nn/embedding_spec.py,
      ``AdagradMomentumOptimizerSpec``. Nesterov momentum: Sutskever, Martens,
      Dahl and Hinton, "On the importance of initialization and momentum in
      deep learning", ICML 2013.

    Differences from other libraries:
      The rule is theirs; the defaults differ. TensorFlow's
      ``tpu_embedding_v2_utils.AdagradMomentum`` defaults to lr 0.001,
      momentum 0 and an initial accumulator of 0; jax-tpu-embedding's
      ``AdagradMomentumOptimizerSpec`` to lr 0.001, momentum 0.9 and an
      initial accumulator of 0.1. Here lr is 0.01 (as `adagrad`), momentum
      0.9, tau 0.1. Neither has a zero guard: with tau = eps = 0 their first
      zero gradient gives 0 * inf = NaN where this gives 0. Their weight
      clipping and weight decay options are not here (chain
      ``optax.add_decayed_weights`` on dense leaves).
    """
    caller = "adagrad_momentum"
    checks.check_number(caller, "learning_rate", learning_rate, allow_schedule=True)
    h = check_hyperparameters(
        caller,
        AdagradMomentumHyperparameters(
            momentum=momentum,
            beta2=beta2,
            exponent=exponent,
            eps=eps,
            use_nesterov=use_nesterov,
            initial_accumulator_value=initial_accumulator_value,
            initial_momentum_value=initial_momentum_value,
            accumulator_dtype=accumulator_dtype,
            stack_slots=stack_slots,
            pad_id=pad_id,
            out_of_range=out_of_range,
            unique_rows=unique_rows,
            nonfinite=nonfinite,
        ),
    )
    stochastic_rounding = rounding.check_arguments(caller, stochastic_rounding, seed)
    chain = optax.chain(
        adagrad_momentum_preconditioner(caller, h),
        on_row_values(optax.scale_by_learning_rate(learning_rate)),
    )
    chain = rounding.optional(
        caller, stochastic_rounding, seed, chain, accumulator_dtype=h.accumulator_dtype
    )
    return nonfinite_policy.wrap(caller, nonfinite, chain, skips_inside=True)
