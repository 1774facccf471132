"""The Adagrad transform: `ScaleByAdagradState`, `scale_by_adagrad`, `adagrad`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adagrad_jax import _spmd, _validation

_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def accumulator_dtype_for(param_dtype: Any, accumulator_dtype: Any = None) -> jnp.dtype:
    """The dtype of the sum of squares kept for a parameter of `param_dtype`.

    An explicit `accumulator_dtype` wins. Otherwise bfloat16 and float16
    parameters get a float32 accumulator (a bfloat16 sum of ones stops growing
    at 256 and float16 squares overflow above 256), complex parameters get the
    real dtype of their precision, and every other dtype keeps its own.

    >>> import jax.numpy as jnp
    >>> accumulator_dtype_for(jnp.bfloat16).name
    'float32'
    >>> accumulator_dtype_for(jnp.complex64).name
    'float32'
    """
    if accumulator_dtype is not None:
        return jnp.dtype(accumulator_dtype)
    dtype = jnp.dtype(param_dtype)
    if dtype in _LOW_PRECISION:
        return jnp.dtype(jnp.float32)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.finfo(dtype).dtype  # complex64 -> float32, complex128 -> float64
    return dtype


def squared_magnitude(g: jax.Array, dtype: Any) -> jax.Array:
    """|g|^2 computed in `dtype` (re^2 + im^2 for complex `g`).

    The cast comes first, so float16 gradients above 256 do not overflow.
    """
    if jnp.iscomplexobj(g):
        re = jnp.real(g).astype(dtype)
        im = jnp.imag(g).astype(dtype)
        return re * re + im * im
    g = g.astype(dtype)
    return g * g


def adagrad_direction(
    g: jax.Array, sum_of_squares: jax.Array, eps: Any, eps_root: Any, *, tau: Any
) -> jax.Array:
    """g / (sqrt(sum_of_squares + eps_root) + eps), in the gradient's dtype.

    The denominator is formed in the accumulator's dtype; the division in the
    wider of the gradient's and the accumulator's dtype. A denominator below
    the smallest normal number of the accumulator's dtype (only while every
    gradient so far was 0 and tau = `tau`, eps and eps_root are each 0 or
    subnormal in that dtype, which XLA flushes to 0) gives an update of
    exactly 0 instead of 0/0 = NaN. The guard is compiled in unless a Python
    constant among tau, eps and eps_root is a normal positive number in that
    dtype (1e-8 is in float32 but rounds to 0 in float16; 1e-40 is subnormal
    in float32): each one alone then keeps the denominator normal, since the
    accumulator starts at tau and never decreases.
    """
    acc_dtype = sum_of_squares.dtype
    with jax.numpy_dtype_promotion("standard"):  # A dtype query, not a mix.
        compute_dtype = jnp.promote_types(g.dtype, acc_dtype)
    denom = jnp.sqrt(sum_of_squares + jnp.asarray(eps_root, acc_dtype))
    denom = denom + jnp.asarray(eps, acc_dtype)
    if any(_validation.is_positive_in(v, acc_dtype) for v in (tau, eps, eps_root)):
        return (g.astype(compute_dtype) / denom.astype(compute_dtype)).astype(g.dtype)
    # Compared with the smallest normal number, not with 0: a backend that
    # flushes subnormals in the division but not in the comparison would
    # otherwise divide 0 by a flushed 0.
    normal = denom >= jnp.asarray(jnp.finfo(acc_dtype).tiny, acc_dtype)
    safe = jnp.where(normal, denom, jnp.ones_like(denom))
    out = g.astype(compute_dtype) / safe.astype(compute_dtype)
    return jnp.where(normal, out, jnp.zeros_like(out)).astype(g.dtype)


def init_sum_of_squares(
    fn: str, params: Any, initial_accumulator_value: Any, accumulator_dtype: Any
) -> Any:
    """A tree like `params` filled with tau, in the accumulator dtype.

    Works on arrays, `jax.ShapeDtypeStruct`s and Python scalars (a float leaf
    is a float32 scalar, float64 with 64-bit mode on, as `jnp.asarray` makes
    it) and keeps each leaf's sharding.

    Raises:
      TypeError: for a leaf that is not float or complex (an int or bool,
        Python or JAX), naming its path.
    """

    def leaf(path, p):
        if not hasattr(p, "dtype") or not hasattr(p, "shape"):
            p = jnp.asarray(p)  # A Python scalar, as optax accepts them.
        _validation.check_param_dtype(fn, path, p.dtype)
        dtype = accumulator_dtype_for(p.dtype, accumulator_dtype)
        if isinstance(p, jax.core.Tracer):
            # Under jit on an Explicit mesh the sharding is part of the type:
            # keep it, so the first update does not change the state's type.
            typed = _spmd.typed_sharding(p)
            out = jnp.full(p.shape, initial_accumulator_value, dtype, out_sharding=typed)
            return _spmd.tie_to(out, p)
        sharding = getattr(p, "sharding", None)
        if isinstance(p, jax.ShapeDtypeStruct) or sharding is None:
            if isinstance(getattr(sharding, "mesh", None), jax.sharding.AbstractMesh):
                return jnp.full(p.shape, initial_accumulator_value, dtype, out_sharding=sharding)
            return jnp.full(p.shape, initial_accumulator_value, dtype, device=sharding)
        return jnp.full_like(p, initial_accumulator_value, dtype=dtype)

    return jax.tree_util.tree_map_with_path(leaf, params)


class ScaleByAdagradState(NamedTuple):
    """State of `scale_by_adagrad`.

    Attributes:
      sum_of_squares: a tree like the parameters holding G_t, the running sum of
        squared gradients (started at `initial_accumulator_value`). Its dtype is
        fixed at `init` (float32 for bfloat16/float16 parameters, the real dtype
        for complex parameters) and never changes.
    """

    sum_of_squares: optax.Updates


@_validation.checked_arguments
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
    from adagrad_jax._sparse_adagrad import scale_by_adagrad_impl

    return scale_by_adagrad_impl("scale_by_adagrad", **arguments)


@_validation.checked_arguments
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
    from adagrad_jax._sparse_adagrad import adagrad_impl  # See scale_by_adagrad.

    return adagrad_impl("adagrad", **arguments)


def coupled_weight_decay(weight_decay: Any, fn: str = "adagrad") -> optax.GradientTransformation:
    """`optax.add_decayed_weights`, or `optax.identity` for None or a constant 0.

    Both have an empty state, so the chain's state has the same structure
    either way; skipping the constant 0 saves a multiply-add per element.
    Before it adds ``weight_decay * params``, the decay checks the updates
    against `params` with `_validation.check_gradients`: an integer gradient
    would be promoted and a (1,) gradient broadcast against a (3,) parameter.
    """
    if weight_decay is None or _validation.is_zero_constant(weight_decay):
        return optax.identity()
    decay = optax.add_decayed_weights(weight_decay)

    def update_fn(updates, state, params=None):
        if params is not None:
            _validation.check_gradients(fn, "updates", updates, "params", params)
        return decay.update(updates, state, params)

    return optax.GradientTransformation(decay.init, update_fn)
