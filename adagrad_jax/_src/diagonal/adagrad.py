"""Diagonal Adagrad: `adagrad`, `scale_by_adagrad` and their leaf rule, `adagrad_rule`.

Dense leaves get the dense rule; `RowSparse` leaves go through the row engine
(`tables/engine.py:map_rule`), which reads and writes only the touched rows.
A constructor passes its arguments on by name in an `AdagradHyperparameters`;
`build_adagrad` and `build_scale_by_adagrad` check them and build the transform
(`adagrad_preconditioner`), for these names and for their v0.1 names
(`v01_names.py`), whose errors name them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.core import checks, nonfinite_policy, placement, quantized
from adagrad_jax._src.core.docs import shared_args
from adagrad_jax._src.core.numerics import adagrad_direction, per_row, row_mean, squared_magnitude
from adagrad_jax._src.core.rounding import round_sum, rounds, update_dtype
from adagrad_jax._src.core.slots import init_sum_of_squares
from adagrad_jax._src.diagonal.weight_decay import sparse_coupled_weight_decay
from adagrad_jax._src.tables import stochastic_rounding as rounding
from adagrad_jax._src.tables.apply import on_row_values
from adagrad_jax._src.tables.engine import map_rule
from adagrad_jax._src.tables.ids import check_id_flags


def adagrad_rule(eps: Any, eps_root: Any, tau: Any, row_wise: bool):
    """The leaf rule of `scale_by_adagrad`, per coordinate or per row."""

    def rule(g, slots, w, rounder=None):
        del w
        (s,) = slots
        g = g.astype(update_dtype(rounder, g))
        if quantized.is_int8(s):  # per coordinate; requantized stochastically
            total, new = quantized.add_squares(s, g, rounder.bits(g.shape))
            # (tau keeps no sum normal here: a coded sum may decode to 0.)
            return adagrad_direction(g, total, eps, eps_root, tau=0.0), (new,)
        # (Rounded stochastically, a low-precision sum takes its square in float32.)
        sq = squared_magnitude(g, jnp.float32 if rounds(rounder, s) else s.dtype)
        if not row_wise:
            s = round_sum(rounder, s, sq)  # Exactly scale_by_adagrad's arithmetic.
            return adagrad_direction(g, s, eps, eps_root, tau=tau), (s,)
        s = round_sum(rounder, s, row_mean(sq))
        return adagrad_direction(g, per_row(s, g.ndim), eps, eps_root, tau=tau), (s,)

    return rule


@dataclasses.dataclass(frozen=True)
class AdagradHyperparameters:
    """The arguments of `scale_by_adagrad`, by name, as a constructor passes them on.

    `check_hyperparameters` checks them and returns the checked bundle that
    `adagrad_preconditioner` takes (the compat presets build it from values
    they checked themselves).
    """

    initial_accumulator_value: Any
    eps: Any
    eps_root: Any
    accumulator_dtype: Any
    row_wise: bool
    pad_id: int | None
    out_of_range: str
    unique_rows: int | None
    nonfinite: str


def check_hyperparameters(
    caller: str, hyperparameters: AdagradHyperparameters
) -> AdagradHyperparameters:
    """Checks the arguments `adagrad` and `scale_by_adagrad` share; errors name `caller`.

    Returns them with `accumulator_dtype` resolved and `row_wise` a Python bool.
    """
    h = hyperparameters
    checks.check_number(caller, "initial_accumulator_value", h.initial_accumulator_value)
    checks.check_number(caller, "eps", h.eps)
    checks.check_number(caller, "eps_root", h.eps_root)
    row_wise = checks.check_bool(caller, "row_wise", h.row_wise)
    refused = "are per coordinate; with row_wise=True the state is one number per row"
    accumulator_dtype = checks.check_accumulator_dtype(
        caller, h.accumulator_dtype, int8_refused=refused if row_wise else None
    )
    check_id_flags(caller, h.pad_id, h.out_of_range, h.unique_rows)
    nonfinite_policy.check(caller, h.nonfinite)
    return dataclasses.replace(h, accumulator_dtype=accumulator_dtype, row_wise=row_wise)


class ScaleByAdagradState(NamedTuple):
    """State of `scale_by_adagrad`.

    Attributes:
      sum_of_squares: a tree like the parameters holding G_t, the running sum of
        squared gradients (started at `initial_accumulator_value`). Its dtype is
        fixed at `init` (float32 for bfloat16/float16 parameters, the real dtype
        for complex parameters) and never changes.
    """

    sum_of_squares: optax.Updates


def adagrad_preconditioner(
    caller: str, hyperparameters: AdagradHyperparameters
) -> optax.GradientTransformation:
    """`scale_by_adagrad`'s transform without the `nonfinite` wrapper (callers wrap
    their whole chain); its trace-time errors name `caller`."""
    rule = adagrad_rule(
        eps=hyperparameters.eps,
        eps_root=hyperparameters.eps_root,
        tau=hyperparameters.initial_accumulator_value,
        row_wise=hyperparameters.row_wise,
    )

    def init_fn(params):
        if hyperparameters.row_wise:
            params = jax.tree.map(placement.row_like, params)
        return ScaleByAdagradState(
            sum_of_squares=init_sum_of_squares(
                caller,
                params=params,
                initial_accumulator_value=hyperparameters.initial_accumulator_value,
                accumulator_dtype=hyperparameters.accumulator_dtype,
            )
        )

    def update_fn(updates, state, params=None, *, rounding_key=None, **extra_args):
        del extra_args
        updates, (sums,) = map_rule(
            caller,
            rule=rule,
            updates=updates,
            slots=(state.sum_of_squares,),
            params=params,
            row_wise=hyperparameters.row_wise,
            pad_id=hyperparameters.pad_id,
            out_of_range=hyperparameters.out_of_range,
            unique_rows=hyperparameters.unique_rows,
            nonfinite=hyperparameters.nonfinite,
            state_name="state.sum_of_squares",
            rounding=rounding_key,
        )
        return updates, ScaleByAdagradState(sum_of_squares=sums)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def build_scale_by_adagrad(
    caller: str, hyperparameters: AdagradHyperparameters
) -> optax.GradientTransformation:
    """`scale_by_adagrad` (and `scale_by_sparse_adagrad`): checks, the transform, the
    `nonfinite` policy; errors name `caller`."""
    h = check_hyperparameters(caller, hyperparameters)
    scale = adagrad_preconditioner(caller, h)
    # 8-bit accumulators are requantized stochastically: the wrapper keys the step (seed 0).
    scale = rounding.optional(caller, False, 0, scale, accumulator_dtype=h.accumulator_dtype)
    return nonfinite_policy.wrap(caller, h.nonfinite, scale, skips_inside=True)


def build_adagrad(
    caller: str,
    *,
    learning_rate: Any,
    weight_decay: Any,
    hyperparameters: AdagradHyperparameters,
    stochastic_rounding: Any = False,
    seed: Any = 0,
) -> optax.GradientTransformation:
    """`adagrad` (and `sparse_adagrad`): checks, the chain, stochastic rounding,
    the `nonfinite` policy; errors name `caller`."""
    checks.check_number(caller, "learning_rate", learning_rate, allow_schedule=True)
    if weight_decay is not None:
        checks.check_number(caller, "weight_decay", weight_decay)
    h = check_hyperparameters(caller, hyperparameters)
    stochastic_rounding = rounding.check_arguments(caller, stochastic_rounding, seed)
    chain = optax.chain(
        sparse_coupled_weight_decay(caller, weight_decay),
        adagrad_preconditioner(caller, h),
        on_row_values(optax.scale_by_learning_rate(learning_rate)),
    )
    dtype = h.accumulator_dtype
    chain = rounding.optional(caller, stochastic_rounding, seed, chain, accumulator_dtype=dtype)
    return nonfinite_policy.wrap(caller, h.nonfinite, chain, skips_inside=True)


@checks.checked_arguments
@shared_args
def scale_by_adagrad(
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    eps_root: jax.typing.ArrayLike = 0.0,
    accumulator_dtype: Any = None,
    row_wise: bool = False,
    pad_id: int | None = None,
    out_of_range: str = "drop",
    unique_rows: int | None = None,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    r"""Scales updates by the inverse root of the sum of all squared gradients.

    The Adagrad preconditioner without the learning rate (`adagrad` has the
    whole rule, for tables too). For every coordinate of every leaf, at step
    t = 1, 2, ...::

        G_0 = initial_accumulator_value                       (tau, at init)
        G_t = G_{t-1} + |g_t|^2                               (before use)
        u_t = g_t / (sqrt(G_t + eps_root) + eps)              (eps outside, eps_root inside)
        u_t = 0  where  sqrt(G_t + eps_root) + eps == 0       (never NaN)

    The zero case only arises while every gradient so far was 0 and tau, eps
    and eps_root are all 0 in the accumulator's dtype, where a subnormal value
    counts as 0 (XLA flushes subnormals: eps=1e-40 is 0 in float32; the guard
    treats any denominator below the smallest normal number as 0). For
    complex gradients |g|^2 = re^2 + im^2 and the accumulator is real. Chain
    with `optax.scale_by_learning_rate` (or use `adagrad`) to get the step
    -lr_t * u_t.

    Embedding tables: for a `RowSparse` leaf g of a table with V rows, at each
    step::

        live ids  = ids i with 0 <= i < V, i != pad_id          (others skipped)
        g_r       = sum of g.values[j] over j with g.indices[j] == r   (summed first)
        G_r      <- G_r + |g_r|^2                                (touched rows only)
        u_r       = g_r / (sqrt(G_r + eps_root) + eps)           (0 where the root is 0)

    and the update is ``RowSparse(rows, u)``, one entry per distinct live id
    (the other k - #distinct entries have out-of-range ids and zero values).
    A row no id touches keeps its G and gets no update: exactly what a dense
    gradient that is 0 on that row gives. With ``row_wise=True`` G holds one
    number per row of every leaf, ``G_r <- G_r + mean(|g_r|^2)`` (V numbers
    for a V x D table), shared by the row's coordinates.

    Deduplication has a fixed size (k slots for k ids: a few rounds of hashing
    into a 4k-bucket table, then a segment sum), so it jit-compiles once per k
    and never leaves the device; the update lists the distinct ids in order
    of first appearance. Only the touched rows of G are read and written.

    Args:
      {initial_accumulator_value}
        Must be >= 0. Default 0.
      eps: added to the square root, outside it (>= 0). Default 1e-8.
      eps_root: added to G under the square root (>= 0). Default 0. Adding it
        is the same as starting the accumulator at tau + eps_root.
      accumulator_dtype: real floating dtype of G, or ``"int8"``. Default None:
        float32 for bfloat16 and float16 parameters, the real counterpart for
        complex parameters, the parameter's dtype otherwise. Updates always
        come back in the gradient's dtype.
        {int8}
      row_wise: keep one accumulator entry per row (leading-axis entry) of
        every leaf instead of one per coordinate. Default False. `update` then
        needs `params`: the row-wise state does not record the width of the
        rows, so gradients are checked against the parameters (at trace time,
        before any state changes).
      {pad_id}
      {out_of_range}
      {unique_rows}
      {nonfinite}

    Returns:
      An `optax.GradientTransformation` whose state is `ScaleByAdagradState`
      (a `NonfiniteState` around it with a skip policy); its
      ``sum_of_squares`` has each parameter's shape, or ``shape[:1]`` with
      ``row_wise=True``.

    Raises:
      ValueError: at construction, for a hyperparameter that is negative,
        NaN, not finite in JAX's default float dtype (float32 unless 64-bit
        mode is on, so 1e308 is refused) or not a scalar (a concrete JAX array
        is checked like a Python number, a traced one by shape and dtype), or
        an `accumulator_dtype` that is not real floating or is narrower than
        16 bits (float8); at trace time, for gradients whose tree or leaf
        shapes differ from the state's (equal shapes, no broadcasting; the
        message names the first differing path), or a `RowSparse` whose rows
        do not match its table.
      TypeError: at construction, for a hyperparameter that is not a real
        scalar (a bool, string, complex or boolean array; `fractions.Fraction`
        and `np.longdouble`: pass ``float(x)``); at `init`, for integer or
        boolean parameter leaves; at trace time, for integer or boolean
        gradient leaves, which the update would truncate (refused rather than
        cast; the message names the path and dtype), or a `RowSparse` whose
        ids are not integers.

    Example:
      >>> import jax.numpy as jnp
      >>> import adagrad_jax
      >>> tx = adagrad_jax.scale_by_adagrad(eps=0.0)
      >>> state = tx.init(jnp.zeros(2))
      >>> u, state = tx.update(jnp.array([3.0, 0.0]), state)
      >>> u        # 3 / sqrt(9) = 1; the zero coordinate stays exactly 0
      Array([1., 0.], dtype=float32)
      >>> u, state = tx.update(jnp.array([4.0, 0.0]), state)
      >>> u        # 4 / sqrt(9 + 16)
      Array([0.8, 0. ], dtype=float32)
      >>> state.sum_of_squares
      Array([25.,  0.], dtype=float32)

      On a table, duplicate ids are summed before squaring:

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
      `optax.scale_by_rss` puts its epsilon inside the root and starts at
      tau = 0.1: it equals ``scale_by_adagrad(0.1, eps=0.0, eps_root=1e-7)``.
      PyTorch and the paper put epsilon outside, as our `eps` does.
    """
    return build_scale_by_adagrad(
        "scale_by_adagrad",
        AdagradHyperparameters(
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            eps_root=eps_root,
            accumulator_dtype=accumulator_dtype,
            row_wise=row_wise,
            pad_id=pad_id,
            out_of_range=out_of_range,
            unique_rows=unique_rows,
            nonfinite=nonfinite,
        ),
    )


@checks.checked_arguments
@shared_args
def adagrad(
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
    unique_rows: int | None = None,
    nonfinite: str = "propagate",
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformation:
    r"""Adagrad: per-coordinate steps of lr over the root of summed squared gradients.

    For every coordinate of every leaf, at step t = 1, 2, ... (count = t - 1)::

        g_t     = grad_t + weight_decay * w_t                 (coupled L2)
        G_0     = initial_accumulator_value                   (tau, at init)
        G_t     = G_{t-1} + |g_t|^2                           (before use)
        u_t     = -lr(count) * g_t / (sqrt(G_t + eps_root) + eps)
        u_t     = 0  where  sqrt(G_t + eps_root) + eps == 0   (never NaN)
        w_{t+1} = w_t + u_t                                   (optax.apply_updates)

    Coordinates with large past gradients take small steps; rarely updated
    ones keep large steps. Because G only grows, every step eventually
    shrinks towards 0: Adagrad's known weakness on long, non-convex runs.

    This is ``optax.chain(add_decayed_weights(weight_decay) or identity,
    scale_by_adagrad(...), on_row_values(optax.scale_by_learning_rate(
    learning_rate)))``, so its state is a 3-tuple whose middle entry is a
    `ScaleByAdagradState`.

    Embedding tables: where a parameter is a table, give its gradient as a
    `RowSparse` (`adagrad_jax.value_and_row_grad` computes one). For a
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
    ``G_r <- G_r + mean(|g_r|^2)``, a factor D less state. `scale_by_adagrad`
    describes the deduplication and the update's rows.

    Args:
      learning_rate: lr, a number >= 0 or an optax schedule of the step count
        (0 at the first step). Default 0.01.
      {initial_accumulator_value}
        Must be >= 0. Default 0.
      eps: added outside the square root (>= 0). Default 1e-8.
      eps_root: added inside the square root (>= 0). Default 0.
      weight_decay: coupled L2 coefficient, added to the gradient before it is
        accumulated, as in PyTorch (>= 0), or None for none. Default None
        (the same as 0, but it stays out of the chain under
        `optax.inject_hyperparams`, so `update` needs `params` only when a
        decay is set). Any value but None or a Python 0 raises ValueError
        when a `RowSparse` leaf arrives: decay would touch every row of the
        table.
      accumulator_dtype: real floating dtype of G, or ``"int8"`` (8-bit sums,
        see `scale_by_adagrad`). Default None: float32 for bfloat16/float16
        parameters, the real counterpart for complex ones, the parameter's
        dtype otherwise.
      row_wise: one accumulator entry per row (leading-axis entry) of every
        leaf, G_r += mean(|g_r|^2). Default False. `update` then needs
        `params` (see `scale_by_adagrad`).
      {pad_id}
      {out_of_range}
      {unique_rows}
      {nonfinite}
        With ``row_wise``, ``"skip_coordinate"`` skips the whole row, whose G
        is shared. Tables keep their O(k * D) in-place step with every policy.
      {stochastic_rounding}
      {seed}

    Returns:
      An `optax.GradientTransformation` (its state a 3-tuple, or a
      ``NonfiniteState(nonfinite_steps, inner_state)`` around it with a skip
      policy).

    Raises:
      ValueError, TypeError: as `scale_by_adagrad` (the same hyperparameter,
        gradient and parameter checks, naming ``adagrad``), and for a
        `learning_rate` that is neither a valid number nor a callable; with a
        `weight_decay`, also for updates whose tree or shapes differ from
        `params`.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> import adagrad_jax
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> tx = adagrad_jax.adagrad(learning_rate=0.1)
      >>> state = tx.init(params)
      >>> @jax.jit
      ... def step(params, state):
      ...     grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
      ...     updates, state = tx.update(grads, state, params)
      ...     return optax.apply_updates(params, updates), state
      >>> params, state = step(params, state)
      >>> params["w"]      # the first step moves each coordinate by lr * sign(g)
      Array([ 0.9, -1.9], dtype=float32)

      A table beside a dense leaf (id -1 is padding):

      >>> params = {"table": jnp.zeros((5, 2)), "w": jnp.ones(2)}
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

    Differences from other libraries:
      PyTorch defaults to eps=1e-10; optax to tau=0.1 and eps=1e-7 inside the
      root; Keras 3 to lr=0.001, tau=0.1, eps=1e-7 inside the root and
      decoupled weight decay. `adagrad_jax.compat` reproduces each exactly.
      ``torch.optim.Adagrad`` with a sparse gradient coalesces duplicate ids
      the same way; it has no row-wise mode and no padding ids
      (``nn.Embedding``'s ``padding_idx`` gives those rows a zero gradient
      instead).
    """
    return build_adagrad(
        "adagrad",
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        hyperparameters=AdagradHyperparameters(
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            eps_root=eps_root,
            accumulator_dtype=accumulator_dtype,
            row_wise=row_wise,
            pad_id=pad_id,
            out_of_range=out_of_range,
            unique_rows=unique_rows,
            nonfinite=nonfinite,
        ),
        stochastic_rounding=stochastic_rounding,
        seed=seed,
    )
