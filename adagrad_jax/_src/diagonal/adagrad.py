"""Diagonal Adagrad's leaf rule on the row machinery, and its v0.1 table names.

`adagrad` and `scale_by_adagrad` (in `_adagrad.py`) are built here, by
`adagrad_impl` and `scale_by_adagrad_impl`: dense leaves get the dense rule,
`RowSparse` leaves go through the shared row machinery (`adagrad_jax._rows`),
which reads and writes only the touched rows. The optimizer itself is one small
leaf rule, `_adagrad_rule`. `sparse_adagrad` and `scale_by_sparse_adagrad` are
the same optimizers under the names v0.1 gave them (they keep their own names in
error messages).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from adagrad_jax._src.core import checks, nonfinite_policy
from adagrad_jax._src.core.numerics import adagrad_direction, per_row, row_mean, squared_magnitude
from adagrad_jax._src.core.slots import init_sum_of_squares
from adagrad_jax._src.diagonal.weight_decay import sparse_coupled_weight_decay
from adagrad_jax._src.tables.apply import on_row_values
from adagrad_jax._src.tables.engine import map_rule, row_like
from adagrad_jax._src.tables.ids import check_id_flags


def _adagrad_rule(eps: Any, eps_root: Any, tau: Any, row_wise: bool):
    """The leaf rule of `scale_by_adagrad`, per coordinate or per row."""

    def rule(g, slots, w):
        del w
        (s,) = slots
        sq = squared_magnitude(g, s.dtype)
        if not row_wise:
            s = s + sq  # Exactly scale_by_adagrad's arithmetic.
            return adagrad_direction(g, s, eps, eps_root, tau=tau), (s,)
        s = s + row_mean(sq)
        return adagrad_direction(g, per_row(s, g.ndim), eps, eps_root, tau=tau), (s,)

    return rule


def _scale_by_sparse_adagrad(
    fn,
    initial_accumulator_value,
    eps,
    eps_root,
    accumulator_dtype,
    row_wise,
    pad_id,
    out_of_range,
    nonfinite,
) -> optax.GradientTransformation:
    rule = _adagrad_rule(eps, eps_root, initial_accumulator_value, row_wise)

    def init_fn(params):
        if row_wise:
            params = jax.tree.map(row_like, params)
        return ScaleByAdagradState(
            sum_of_squares=init_sum_of_squares(
                fn, params, initial_accumulator_value, accumulator_dtype
            )
        )

    def update_fn(updates, state, params=None):
        updates, (sums,) = map_rule(
            fn,
            rule,
            updates,
            (state.sum_of_squares,),
            params,
            row_wise=row_wise,
            pad_id=pad_id,
            out_of_range=out_of_range,
            nonfinite=nonfinite,
            state_name="state.sum_of_squares",
        )
        return updates, ScaleByAdagradState(sum_of_squares=sums)

    return optax.GradientTransformation(init_fn, update_fn)


def adagrad_impl(
    fn: str, learning_rate: Any, weight_decay: Any, **arguments: Any
) -> optax.GradientTransformation:
    """The checks and the chain of `adagrad` and of its v0.1 name `sparse_adagrad`;
    `arguments` are those of `_scale_by_sparse_adagrad`, by name."""
    checks.check_number(fn, "learning_rate", learning_rate, allow_schedule=True)
    if weight_decay is not None:
        checks.check_number(fn, "weight_decay", weight_decay)
    chain = optax.chain(
        sparse_coupled_weight_decay(fn, weight_decay),
        _checked_scale_by_adagrad(fn, **arguments),
        on_row_values(optax.scale_by_learning_rate(learning_rate)),
    )
    return nonfinite_policy.wrap(fn, arguments["nonfinite"], chain, skips_inside=True)


def scale_by_adagrad_impl(fn: str, **arguments: Any) -> optax.GradientTransformation:
    """The checks and the transform of `scale_by_adagrad` (and `scale_by_sparse_adagrad`);
    `arguments` are those of `_scale_by_sparse_adagrad`, by name."""
    scale = _checked_scale_by_adagrad(fn, **arguments)
    return nonfinite_policy.wrap(fn, arguments["nonfinite"], scale, skips_inside=True)


def _checked_scale_by_adagrad(fn: str, **arguments: Any) -> optax.GradientTransformation:
    """Checks the arguments `adagrad` and `scale_by_adagrad` share (those of
    `_scale_by_sparse_adagrad`, by name); returns their scaling step."""
    for name in ("initial_accumulator_value", "eps", "eps_root"):
        checks.check_number(fn, name, arguments[name])
    arguments["accumulator_dtype"] = checks.check_float_dtype(
        fn, "accumulator_dtype", arguments["accumulator_dtype"]
    )
    arguments["row_wise"] = checks.check_bool(fn, "row_wise", arguments["row_wise"])
    check_id_flags(fn, arguments["pad_id"], arguments["out_of_range"])
    nonfinite_policy.check(fn, arguments["nonfinite"])
    return _scale_by_sparse_adagrad(fn, **arguments)


class ScaleByAdagradState(NamedTuple):
    """State of `scale_by_adagrad`.

    Attributes:
      sum_of_squares: a tree like the parameters holding G_t, the running sum of
        squared gradients (started at `initial_accumulator_value`). Its dtype is
        fixed at `init` (float32 for bfloat16/float16 parameters, the real dtype
        for complex parameters) and never changes.
    """

    sum_of_squares: optax.Updates


@checks.checked_arguments
def scale_by_adagrad(
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
    r"""Scales updates by the inverse root of the sum of all squared gradients.

    The Adagrad preconditioner without the learning rate. For every coordinate
    of every leaf, at step t = 1, 2, ...::

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

    Args:
      initial_accumulator_value: tau, the starting value of G (>= 0). Default 0.
      eps: added to the square root, outside it (>= 0). Default 1e-8.
      eps_root: added to G under the square root (>= 0). Default 0. Adding it
        is the same as starting the accumulator at tau + eps_root.
      accumulator_dtype: real floating dtype of G. Default None: float32 for
        bfloat16 and float16 parameters, the real counterpart for complex
        parameters, the parameter's dtype otherwise. Updates always come back
        in the gradient's dtype.
      row_wise, pad_id, out_of_range: for embedding tables given `RowSparse`
        gradients; see `scale_by_sparse_adagrad`, which this is (under its
        v0.1 name). Defaults False, None, "drop".
      nonfinite: what a NaN or +-inf gradient entry does: ``"propagate"``
        (default), ``"skip_coordinate"`` or ``"skip_step"``; see `adagrad`.

    Returns:
      An `optax.GradientTransformation` whose state is `ScaleByAdagradState`.

    Raises:
      ValueError: at construction, for a hyperparameter that is negative,
        NaN, not finite in JAX's default float dtype (float32 unless 64-bit
        mode is on, so 1e308 is refused) or not a scalar (a concrete JAX array
        is checked like a Python number, a traced one by shape and dtype), or
        an `accumulator_dtype` that is not real floating or is narrower than
        16 bits (float8); at trace time, for gradients whose tree or leaf
        shapes differ from the state's (equal shapes, no broadcasting; the
        message names the first differing path).
      TypeError: at construction, for a hyperparameter that is not a real
        scalar (a bool, string, complex or boolean array; `fractions.Fraction`
        and `np.longdouble`: pass ``float(x)``); at `init`, for integer or
        boolean parameter leaves; at trace time, for integer or boolean
        gradient leaves, which the update would truncate (refused rather than
        cast; the message names the path and dtype).

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

    References:
      Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online
      Learning and Stochastic Optimization", JMLR 12, 2011.

    Differences from other libraries:
      `optax.scale_by_rss` puts its epsilon inside the root and starts at
      tau = 0.1: it equals ``scale_by_adagrad(0.1, eps=0.0, eps_root=1e-7)``.
      PyTorch and the paper put epsilon outside, as our `eps` does.
    """
    arguments = dict(locals())  # this call's arguments, forwarded by name
    # The row machinery builds on this module's numerics, so it is imported here.

    return scale_by_adagrad_impl("scale_by_adagrad", **arguments)


@checks.checked_arguments
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
    nonfinite: str = "propagate",
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

    Embedding tables: a `RowSparse` gradient where a parameter is a table
    updates only the rows it touches and comes back as a `RowSparse` update
    (apply it with `adagrad_jax.apply_updates`); see `sparse_adagrad`, the
    v0.1 name of this same optimizer, for the row rule, padding and
    out-of-range ids. For this rule, row-sparse training equals dense training.

    Args:
      learning_rate: lr, a number >= 0 or an optax schedule of the step count
        (0 at the first step). Default 0.01.
      initial_accumulator_value: tau, the starting value of G (>= 0). Default 0.
      eps: added outside the square root (>= 0). Default 1e-8.
      eps_root: added inside the square root (>= 0). Default 0.
      weight_decay: coupled L2 coefficient, added to the gradient before it is
        accumulated, as in PyTorch (>= 0), or None for none. Default None
        (the same as 0, but it stays out of the chain under
        `optax.inject_hyperparams`, so `update` needs `params` only when a
        decay is set).
      accumulator_dtype: real floating dtype of G. Default None: float32 for
        bfloat16/float16 parameters, the real counterpart for complex ones, the
        parameter's dtype otherwise.
      row_wise: one accumulator entry per row (leading-axis entry) of every
        leaf, G_r += mean(|g_r|^2). Default False.
      pad_id: a row id treated as padding in `RowSparse` gradients, besides
        negative ids. Default None.
      out_of_range: what `RowSparse` ids >= the row count do: ``"drop"``
        (default) or ``"error"`` (see `scale_by_sparse_adagrad`).
      nonfinite: what a NaN or +-inf gradient entry does. Default
        ``"propagate"``: the rule as written, as in optax, PyTorch and Keras;
        the NaN reaches that coordinate's accumulator and parameter (for good:
        G stays NaN), so it shows in the loss at the step that caused it, and
        the compiled step is exactly the plain one. We keep it the default
        because skipping silently changes what is trained and hides the bug
        that made the NaN. ``"skip_coordinate"``: a coordinate whose gradient
        entry is not finite keeps its accumulator and parameter (update 0),
        the others step (``row_wise``: the whole row is skipped, its G being
        shared). ``"skip_step"``: if any entry is not finite, every state
        array (step counts included) and every parameter stays as it was, as
        ``optax.apply_if_finite`` does. Tables keep their O(k * D) in-place
        step either way. With a skip policy the state is
        ``NonfiniteState(nonfinite_steps, inner_state)``: the usual state,
        and the number of steps that met a NaN or inf. Every optimizer of
        the package takes the same argument.

    Returns:
      An `optax.GradientTransformation` (its state a 3-tuple, or a
      `NonfiniteState` around it with a skip policy).

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

    References:
      Duchi, Hazan and Singer, "Adaptive Subgradient Methods for Online
      Learning and Stochastic Optimization", JMLR 12, 2011.

    Differences from other libraries:
      PyTorch defaults to eps=1e-10; optax to tau=0.1 and eps=1e-7 inside the
      root; Keras 3 to lr=0.001, tau=0.1, eps=1e-7 inside the root and
      decoupled weight decay. `adagrad_jax.compat` reproduces each exactly.
    """
    arguments = dict(locals())  # this call's arguments, forwarded by name

    return adagrad_impl("adagrad", **arguments)
