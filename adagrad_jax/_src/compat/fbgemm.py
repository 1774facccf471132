"""FBGEMM's table Adagrad: `fbgemm_rowwise_adagrad`, `fbgemm_exact_adagrad`.

TorchRec trains its embedding tables with FBGEMM's table-batched embeddings
(TBE), whose optimizer runs fused into the backward pass. These presets give
the same numbers as its ``EmbOptimType.EXACT_ROWWISE_ADAGRAD`` and
``EXACT_ADAGRAD``, with their weight-decay modes and the row max-norm, on dense
leaves and on `RowSparse` tables (through the row engine, `tables/engine.py`).
The rule reads the weights (the decay terms and the max-norm do), and the
learning rate enters the decay terms, so it is one transform that keeps the
step count for optax schedules of the learning rate, as the regularized family
does.

Sources (FBGEMM v1.8.0): ``fbgemm_gpu/codegen/genscript/optimizers.py``
(``rowwise_adagrad()``: ``split_precomputation``, ``split_weight_update``,
``split_post_update``, ``split_weight_update_cpu``; ``adagrad()``),
``fbgemm_gpu/codegen/training/backward/embedding_backward_split_cpu_template.cpp``
and ``fbgemm_gpu/codegen/training/optimizer/
embedding_optimizer_split_device_kernel_template.cuh``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.core import checks, nonfinite_policy, numerics, placement, slots
from adagrad_jax._src.core.docs import shared_args
from adagrad_jax._src.core.numerics import LOW_PRECISION, per_row, row_mean
from adagrad_jax._src.core.rounding import round_sum
from adagrad_jax._src.core.slots import init_sum_of_squares
from adagrad_jax._src.tables import stochastic_rounding as rounding
from adagrad_jax._src.tables.engine import map_rule
from adagrad_jax._src.tables.ids import check_id_flags

# FBGEMM's WeightDecayMode NONE, L2 and DECOUPLE (not COUNTER, COWCLIP, DECOUPLE_GLOBAL).
WEIGHT_DECAY_MODES = ("none", "l2", "decoupled")


class FbgemmAdagradState(NamedTuple):
    """State of `fbgemm_rowwise_adagrad` and `fbgemm_exact_adagrad`.

    Attributes:
      count: int32 number of steps taken (the learning-rate schedule's argument).
      sum_of_squares: m, FBGEMM's ``momentum1``, started at 0: one number per
        row (``p.shape[:1]``) for the row-wise preset, one per coordinate for
        the exact one; float32 for bfloat16 and float16 parameters.
    """

    count: jax.Array  # type: ignore[assignment]  # (shadows tuple.count, as in optax)
    sum_of_squares: optax.Updates


def check_weight_decay_mode(caller: str, value: Any) -> str:
    """Returns the mode; ValueError naming the call, the value, the choices and FBGEMM's others."""
    if isinstance(value, str) and value in WEIGHT_DECAY_MODES:
        return value
    name = getattr(value, "name", value)  # an FBGEMM WeightDecayMode member: its name
    lowered = name.lower() if isinstance(name, str) else None
    suggestion = "decoupled" if lowered == "decouple" else lowered
    if suggestion in WEIGHT_DECAY_MODES:
        hint = f" Did you mean {suggestion!r}?"
    else:
        hint = " FBGEMM's COUNTER, COWCLIP and DECOUPLE_GLOBAL modes are not supported."
    raise ValueError(
        f"{caller}(weight_decay_mode={value!r}): weight_decay_mode must be one of 'none',"
        f" 'l2', 'decoupled' (FBGEMM's WeightDecayMode.NONE, L2, DECOUPLE).{hint}"
    )


def fbgemm_adagrad_rule(
    lr: Any, eps: Any, weight_decay: Any, mode: str, max_norm: Any, row_wise: bool
):
    """The leaf rule of both presets (see `fbgemm_rowwise_adagrad` for the formula).

    Arithmetic is in the accumulator's dtype (float32 for bfloat16 and float16
    parameters); the update is ``w_new - w``, in float32 for those parameters
    (so that applying it rounds the new weight once) and in the gradient's
    dtype otherwise.
    """
    decays = mode != "none" and not checks.is_zero_constant(weight_decay)
    clips = row_wise and not checks.is_zero_constant(max_norm)

    def rule(g, slots, w, rounder=None):
        (m,) = slots
        dtype = m.dtype
        out = dtype if jnp.dtype(w.dtype) in LOW_PRECISION else g.dtype
        g_c, w_c = g.astype(dtype), w.astype(dtype)
        wd = jnp.asarray(weight_decay, dtype)
        g_acc = g_c + wd * w_c if decays and mode == "l2" else g_c  # the L2 gradient g'
        sq = g_acc * g_acc
        if row_wise:
            m = round_sum(rounder, m, row_mean(sq))
            mult = per_row(numerics.adagrad_step_size(lr, m, eps, 0.0, tau=0.0), g.ndim)
        else:
            m = round_sum(rounder, m, sq)
            mult = numerics.adagrad_step_size(lr, m, eps, 0.0, tau=0.0)
        if not decays:
            w_new = w_c - mult * g_c
        elif mode == "l2":
            w_new = (1 - mult * wd) * w_c - mult * g_c
        else:  # decoupled
            w_new = (1 - jnp.asarray(lr).astype(dtype) * wd) * w_c - mult * g_c
        if clips:
            w_new = _clip_rows(w_new, jnp.asarray(max_norm, dtype))
        return (w_new - w_c).astype(out), (m,)

    return rule


def _clip_rows(w: jax.Array, max_norm: jax.Array) -> jax.Array:
    """Each row (leading-axis entry) of `w` rescaled to L2 norm `max_norm` where it is longer.

    No epsilon, as FBGEMM: ``n > max_norm`` implies ``n > 0``. A `max_norm` of
    0 (traced, under `optax.inject_hyperparams`) clips nothing.
    """
    sq = w * w
    norm = jnp.sqrt(jnp.sum(sq, axis=tuple(range(1, w.ndim))) if w.ndim > 1 else sq)
    longer = (max_norm > 0) & (norm > max_norm)
    scale = jnp.where(longer, max_norm / jnp.where(longer, norm, 1), 1)
    return w * per_row(scale.astype(w.dtype), w.ndim)


def _build(
    caller: str,
    *,
    learning_rate: Any,
    eps: Any,
    weight_decay: Any,
    weight_decay_mode: Any,
    max_norm: Any,
    row_wise: bool,
    stochastic_rounding: Any,
    seed: Any,
    pad_id: Any,
    out_of_range: Any,
    unique_rows: Any,
    nonfinite: Any,
) -> optax.GradientTransformation:
    """Checks both presets' arguments and builds the transform; errors name `caller`."""
    checks.check_number(caller, "learning_rate", learning_rate, allow_schedule=True)
    checks.check_nonnegative(caller, eps=eps, weight_decay=weight_decay)
    mode = check_weight_decay_mode(caller, weight_decay_mode)
    if row_wise:
        checks.check_number(caller, "max_norm", max_norm)
    check_id_flags(caller, pad_id, out_of_range, unique_rows)
    nonfinite_policy.check(caller, nonfinite)
    stochastic_rounding = rounding.check_arguments(caller, stochastic_rounding, seed)

    def init_fn(params):
        checks.check_real_params(caller, params)
        shapes = jax.tree.map(placement.row_like, params) if row_wise else params
        return FbgemmAdagradState(
            count=slots.init_count(),
            sum_of_squares=init_sum_of_squares(caller, shapes, 0.0, None),
        )

    def update_fn(updates, state, params=None, *, rounding_key=None, **extra_args):
        del extra_args
        lr = numerics.learning_rate_at(learning_rate, state.count)
        rule = fbgemm_adagrad_rule(lr, eps, weight_decay, mode, max_norm, row_wise)
        updates, (sums,) = map_rule(
            caller,
            rule,
            updates,
            (state.sum_of_squares,),
            params,
            read_params=True,
            row_wise=row_wise,
            pad_id=pad_id,
            out_of_range=out_of_range,
            unique_rows=unique_rows,
            nonfinite=nonfinite,
            state_name="state.sum_of_squares",
            rounding=rounding_key,
        )
        return updates, FbgemmAdagradState(optax.safe_increment(state.count), sums)

    tx: optax.GradientTransformation = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    tx = rounding.optional(caller, stochastic_rounding, seed, tx)
    return nonfinite_policy.wrap(caller, nonfinite, tx, skips_inside=True)


@checks.checked_arguments
@shared_args
def fbgemm_rowwise_adagrad(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mode: str = "none",
    max_norm: jax.typing.ArrayLike = 0.0,
    stochastic_rounding: bool = False,
    seed: int = 0,
    pad_id: int | None = None,
    out_of_range: str = "drop",
    unique_rows: int | None = None,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    """FBGEMM's ``EmbOptimType.EXACT_ROWWISE_ADAGRAD`` (TorchRec's row-wise Adagrad).

    One accumulator m per row (per leading-axis entry of a leaf; the entries
    of a vector are rows of one number). At step t = 1, 2, ... (count =
    t - 1), for each row r that the step updates, with g its gradient (a
    table row's gradient summed over all its ids first, as FBGEMM's "exact"
    backward does) and w its weights before the step::

        g'    = g + weight_decay * w       if weight_decay_mode == "l2", else g
        m    += mean_d(g'^2)               (m starts at 0; the mean over the row)
        mult  = lr(count) / (sqrt(m) + eps)        (mult = 0 where sqrt(m) + eps == 0)
        corr  = 1 - mult * weight_decay    "l2"
                1 - lr(count) * weight_decay        "decoupled"
                1                          "none" (weight_decay is then ignored)
        w_new = corr * w - mult * g        (the raw g)
        if max_norm > 0 and ||w_new||_2 > max_norm:  w_new *= max_norm / ||w_new||_2
        update = w_new - w

    "l2" is textbook L2: ``w_new = w - mult * g'``, the decay inside both the
    accumulator and the step. "decoupled" decays the old weight by lr * wd,
    not scaled by the adaptive multiplier, and accumulates the raw g. The
    max-norm rescales each updated row after its step (no epsilon).

    A dense leaf updates every row. A `RowSparse` table updates only the rows
    its ids touch: untouched rows are neither decayed nor rescaled ("lazy", as
    FBGEMM, which only visits the rows of the batch), so training with row
    gradients differs from dense training with zero rows once a decay or a
    max-norm is set. For bfloat16 and float16 parameters the arithmetic is in
    float32 and the update comes back in float32, so that
    `adagrad_jax.apply_updates` (or `optax.apply_updates`) rounds the new
    weight once, as FBGEMM stores its FP16 rows.

    Args:
      learning_rate: lr, a number >= 0 or an optax schedule of the step count
        (0 at the first step). Default 0.01 (FBGEMM's).
      eps: added outside the square root (>= 0). Default 1e-8 (FBGEMM's).
      weight_decay: wd (>= 0). Default 0. Used only with a `weight_decay_mode`
        other than "none", as in FBGEMM.
      weight_decay_mode: "none" (default), "l2" or "decoupled": FBGEMM's
        ``WeightDecayMode.NONE``, ``L2`` and ``DECOUPLE``. FBGEMM's
        ``COUNTER``, ``COWCLIP`` and ``DECOUPLE_GLOBAL`` are not supported
        (ValueError).
      max_norm: rescale each updated row to this L2 norm at most after its step
        (>= 0); 0 (default) turns it off.
      {stochastic_rounding}
      {seed}
      {pad_id}
      {out_of_range}
      {unique_rows}
      {nonfinite}
        A row's accumulator is shared, so ``"skip_coordinate"`` skips the whole
        row.

    Returns:
      An `optax.GradientTransformation` whose state is an `FbgemmAdagradState`
      (count, and m with shape ``p.shape[:1]`` per parameter; wrapped as the
      options say). Its `update` needs `params`. `adagrad_jax.accumulators`
      reads m.

    Raises:
      ValueError, TypeError: at construction for a hyperparameter that is not
        a finite real scalar >= 0 (or, for `learning_rate`, a schedule), a
        `weight_decay_mode` outside the three, or a bad table flag; at `init`
        for integer, boolean or complex parameters; at trace time for
        `update` without `params`, or gradients whose tree or shapes differ
        from the parameters' (naming the path). Each message names
        ``fbgemm_rowwise_adagrad``, the argument and the value.

    Example:
      >>> import jax.numpy as jnp
      >>> import adagrad_jax
      >>> from adagrad_jax.compat import fbgemm_rowwise_adagrad
      >>> tx = fbgemm_rowwise_adagrad(learning_rate=2.0, eps=0.0, max_norm=2.5)
      >>> params = jnp.array([[1.0, 1.0], [5.0, 6.0]])
      >>> state = tx.init(params)
      >>> g = adagrad_jax.RowSparse(jnp.array([1, 1]), jnp.ones((2, 2)))  # row 1: g = (2, 2)
      >>> updates, state = tx.update(g, state, params)
      >>> adagrad_jax.apply_updates(params, updates)  # (5, 6) - 2 * (2, 2) / 2 = (3, 4), norm 5
      Array([[1. , 1. ],
             [1.5, 2. ]], dtype=float32)
      >>> adagrad_jax.accumulators(state)  # mean((2, 2)^2); row 0 untouched
      Array([0., 4.], dtype=float32)

    Differences from FBGEMM: FBGEMM 1.8.0's CPU kernels apply the weight
    decay only on some paths: its pooled FP32 fast path for a table that one
    feature uses (``fbgemm::GenerateSparseAdaGrad``, called with
    ``weight_decay=0``) ignores `weight_decay` and `weight_decay_mode`
    silently, while a table shared by several features, ``PoolingMode.NONE``
    and FP16 weights apply them as above. `max_norm` exists only in FBGEMM's
    CUDA kernel (``split_post_update``); its CPU kernels ignore it. So a
    TorchRec run on CPU that set these trained without them: pass their
    defaults to reproduce it. Where ``sqrt(m) + eps`` is 0 (eps = 0 and a zero
    gradient so far) FBGEMM divides by zero; here mult is 0. For FP16 rows
    with a max-norm, FBGEMM's CUDA kernel measures the stored (rounded) row and
    rounds the rescaled row again; here the float32 row is rescaled and
    rounded once. FBGEMM's stochastic rounding of FP16 rows (on by default on
    GPU) draws other random numbers than ``stochastic_rounding=True``: the
    same distribution, not the same bits.
    """
    return _build(
        "fbgemm_rowwise_adagrad",
        learning_rate=learning_rate,
        eps=eps,
        weight_decay=weight_decay,
        weight_decay_mode=weight_decay_mode,
        max_norm=max_norm,
        row_wise=True,
        stochastic_rounding=stochastic_rounding,
        seed=seed,
        pad_id=pad_id,
        out_of_range=out_of_range,
        unique_rows=unique_rows,
        nonfinite=nonfinite,
    )


@checks.checked_arguments
@shared_args
def fbgemm_exact_adagrad(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mode: str = "none",
    stochastic_rounding: bool = False,
    seed: int = 0,
    pad_id: int | None = None,
    out_of_range: str = "drop",
    unique_rows: int | None = None,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    """FBGEMM's ``EmbOptimType.EXACT_ADAGRAD``: per-coordinate Adagrad on tables.

    `fbgemm_rowwise_adagrad`'s rule with one accumulator per coordinate and no
    max-norm. At step t = 1, 2, ... (count = t - 1), for every coordinate of
    every updated row, with g its gradient (a table row's ids summed first)
    and w its weight before the step::

        g'    = g + weight_decay * w       if weight_decay_mode == "l2", else g
        m    += g'^2                       (m starts at 0)
        mult  = lr(count) / (sqrt(m) + eps)        (mult = 0 where sqrt(m) + eps == 0)
        corr  = 1 - mult * weight_decay    "l2"
                1 - lr(count) * weight_decay        "decoupled"
                1                          "none" (weight_decay is then ignored)
        w_new = corr * w - mult * g
        update = w_new - w

    With the default "none" this is FBGEMM's rule, ``m += g^2; w -= lr * g /
    (sqrt(m) + eps)``, and `adagrad_jax.adagrad` with ``eps`` outside the root
    and tau = 0. Untouched table rows do not move (lazy); bfloat16 and float16
    parameters get float32 arithmetic and float32 updates, as in
    `fbgemm_rowwise_adagrad`.

    Args:
      learning_rate: lr, a number >= 0 or an optax schedule of the step count
        (0 at the first step). Default 0.01 (FBGEMM's).
      eps: added outside the square root (>= 0). Default 1e-8 (FBGEMM's).
      weight_decay: wd (>= 0). Default 0. Used only with a `weight_decay_mode`
        other than "none".
      weight_decay_mode: "none" (default), "l2" or "decoupled": the
        per-coordinate form of FBGEMM's row-wise ``WeightDecayMode.NONE``,
        ``L2`` and ``DECOUPLE`` (see "Differences from FBGEMM"). ``COUNTER``,
        ``COWCLIP`` and ``DECOUPLE_GLOBAL`` are not supported (ValueError).
      {stochastic_rounding}
      {seed}
      {pad_id}
      {out_of_range}
      {unique_rows}
      {nonfinite}

    Returns:
      An `optax.GradientTransformation` whose state is an `FbgemmAdagradState`
      (count, and m shaped like each parameter). Its `update` needs `params`.

    Raises:
      ValueError, TypeError: as `fbgemm_rowwise_adagrad`, naming
        ``fbgemm_exact_adagrad``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from adagrad_jax.compat import fbgemm_exact_adagrad
      >>> tx = fbgemm_exact_adagrad(
      ...     learning_rate=0.5, eps=0.0, weight_decay=0.5, weight_decay_mode="decoupled")
      >>> w = jnp.array([1.0, 2.0])
      >>> state = tx.init(w)
      >>> u, state = tx.update(jnp.array([3.0, 0.0]), state, w)
      >>> optax.apply_updates(w, u)  # 0.75 * w - 0.5 * g / sqrt(g^2); mult = 0 where g == 0
      Array([0.25, 1.5 ], dtype=float32)

    Differences from FBGEMM: FBGEMM 1.8.0's ``EXACT_ADAGRAD`` ignores
    weight decay entirely, on every device and path (its kernel takes no
    weight-decay argument, and nothing warns). A TorchRec configuration that
    set `weight_decay` with ``EXACT_ADAGRAD`` trained without it: pass
    ``weight_decay=0`` (or ``weight_decay_mode="none"``) to reproduce it.
    The "l2" and "decoupled" modes here are the per-coordinate analogues of
    the row-wise ones. Where ``sqrt(m) + eps`` is 0 FBGEMM divides by zero;
    here mult is 0.
    """
    return _build(
        "fbgemm_exact_adagrad",
        learning_rate=learning_rate,
        eps=eps,
        weight_decay=weight_decay,
        weight_decay_mode=weight_decay_mode,
        max_norm=0.0,
        row_wise=False,
        stochastic_rounding=stochastic_rounding,
        seed=seed,
        pad_id=pad_id,
        out_of_range=out_of_range,
        unique_rows=unique_rows,
        nonfinite=nonfinite,
    )
