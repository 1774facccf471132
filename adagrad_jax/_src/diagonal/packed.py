"""`packed_adagrad` (experimental): Adagrad as a training state that owns flat buffers.

Public as `adagrad_jax.experimental.packed_adagrad` (and, for 0.1 code, as
`adagrad_jax.packed_adagrad`). It wins the optimizer step alone; whole training
steps of models that feed their weights to matrix products lose, because those
read the weights through strided views of the packed buffers
(`benchmarks/whole_step.py`). Why the buffers are laid out as they are:
``packed_layout.py``, which also holds the state and its views; this module
holds the step and the object users get.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.core import checks, nonfinite_policy
from adagrad_jax._src.core.docs import shared_args
from adagrad_jax._src.diagonal.adagrad import ScaleByAdagradState, adagrad
from adagrad_jax._src.diagonal.packed_layout import (
    FN,
    PackedAdagradState,
    as_array,
    build_layout,
    check_grads,
    concat,
    flat,
    initial_buffers,
    pack,
    params_tree,
    sum_of_squares_tree,
    unpack,
)


def _not_a_transformation() -> TypeError:
    return TypeError(
        f"{FN}(...) has no update(updates, state, params): it is a training state that"
        " owns the parameters (init(params) -> state, step(state, grads) -> state,"
        " params(state) -> params), not an optax GradientTransformation, so optax.chain,"
        " optax.masked, optax.MultiSteps, optax.inject_hyperparams and flax's"
        " nnx.Optimizer cannot run it. Use adagrad_jax.adagrad(...) there: the same rule,"
        " as a drop-in transformation. To train with the packed state, jit opt.step"
        " yourself (see adagrad_jax.experimental.packed_adagrad)."
    )


class PackedAdagrad:
    """The functions of a packed Adagrad training state (see `packed_adagrad`).

    Not an `optax.GradientTransformation`: reading ``update``, or unpacking it
    as an ``(init, update)`` pair, raises a TypeError that names
    `packed_adagrad` and points to `adagrad_jax.adagrad`. Where the misuse
    fails: code that reads ``update`` or unpacks the pair when it is built
    fails there. ``optax.chain``, ``optax.masked``, ``optax.MultiSteps``,
    ``optax.inject_hyperparams`` and flax's ``nnx.Optimizer`` read only
    ``init`` when they are built (and may call it), exactly as user code
    does, so they are built without error and raise that TypeError at their
    first ``update``.

    Attributes:
      init: params -> `PackedAdagradState` (copies the parameters in).
      step: (state, grads) -> new state; grads is a tree like the params.
      params: state -> the parameter tree (fresh arrays or fused views).
      sum_of_squares: state -> the tree of accumulators G.
    """

    __slots__ = ("init", "params", "step", "sum_of_squares")

    def __init__(
        self,
        init: Callable[[optax.Params], PackedAdagradState],
        step: Callable[[PackedAdagradState, optax.Updates], PackedAdagradState],
        params: Callable[[PackedAdagradState], optax.Params],
        sum_of_squares: Callable[[PackedAdagradState], optax.Updates],
    ):
        self.init = init
        self.step = step
        self.params = params
        self.sum_of_squares = sum_of_squares

    @property
    def update(self) -> Callable[..., Any]:
        raise _not_a_transformation()

    def __iter__(self) -> Any:
        # `init, update = tx` (a GradientTransformation is a pair) fails here.
        raise _not_a_transformation()

    def __repr__(self) -> str:
        return f"PackedAdagrad(init, step, params, sum_of_squares) of {FN}"


@checks.checked_arguments
@shared_args
def packed_adagrad(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    eps_root: jax.typing.ArrayLike = 0.0,
    weight_decay: jax.typing.ArrayLike = 0.0,
    accumulator_dtype: Any = None,
    interleave: bool = True,
    grad_buffer: bool = True,
    nonfinite: str = "propagate",
) -> PackedAdagrad:
    r"""Adagrad as a packed training state: one pass over memory per step.

    The same rule and the same numbers as `adagrad` (with `optax.apply_updates`)
    for every coordinate, at step t = 1, 2, ... (count = t - 1)::

        g_t     = grad_t + weight_decay * w_t                 (coupled L2)
        G_0     = initial_accumulator_value                   (tau, at init)
        G_t     = G_{t-1} + |g_t|^2                           (before use)
        w_{t+1} = w_t - lr(count) * g_t / (sqrt(G_t + eps_root) + eps)
        the step is 0  where  sqrt(G_t + eps_root) + eps == 0 (never NaN)

    (and the same `nonfinite` policies), but the state owns the parameters:
    leaves that share a dtype live in one flat buffer, and with `interleave`
    each parameter and its accumulator share one complex element (w in the
    real part, G in the imaginary part), so XLA compiles a step to one
    in-place loop per buffer. This is an experimental,
    opt-in path (`adagrad_jax.experimental.packed_adagrad`; the 0.1 name
    `adagrad_jax.packed_adagrad` still imports): it is not an
    `optax.GradientTransformation`: `nnx.Optimizer`, `optax.chain` and the
    other optax wrappers raise a TypeError at their first update (see
    `PackedAdagrad`). It halves the optimizer
    step alone, but in whole training steps a model whose weights feed matrix
    products reads them through strided views (a copy per step), and there
    `adagrad` is as fast or faster (docs/guide/performance.md).

    Jit the step with the state donated, so that it updates the buffers in
    place::

        step = jax.jit(opt.step, donate_argnums=0)

    Args:
      learning_rate: lr, a number >= 0 or an optax schedule of the step count
        (0 at the first step). Default 0.01.
      {initial_accumulator_value}
        Must be >= 0. Default 0.
      eps: added outside the square root (>= 0). Default 1e-8.
      eps_root: added inside the square root (>= 0). Default 0.
      weight_decay: coupled L2 coefficient, added to the gradient before it is
        accumulated (>= 0). Default 0.
      accumulator_dtype: real floating dtype of G. Default None: float32 for
        bfloat16/float16 parameters, the parameter's dtype for float32/float64,
        the real counterpart for complex ones. No ``"int8"``: the buffers hold
        G beside the weights (`adagrad_jax.adagrad` has 8-bit sums).
      interleave: keyword-only. Default True: store w and G of a group in one
        complex buffer when w fits exactly in G's dtype (float32, bfloat16 and
        float16 parameters with a float32 G; float64 with float64), one loop
        per step. False, or complex parameters, or a G narrower than w: two
        flat buffers per group (two loops per step, as on the per-leaf path,
        but still one pair of loops for all the leaves of a dtype). On GPUs,
        where XLA fuses both outputs into one kernel, False already gives one
        pass and its parameter views are plain slices.
      grad_buffer: keyword-only. Default True: keep, for each group of several
        leaves, a flat buffer in the state into which the (donated) step
        packs the gradients in place, instead of allocating a temporary of the
        group's size at every step. It holds as much memory as that temporary
        would, but between steps too. Groups of one leaf never need one.
      {nonfinite}
        Keyword-only. Here ``"propagate"`` checks nothing and the step stays
        one pass; ``"skip_step"`` still writes the gradient buffer (scratch
        space, not optimizer state); with a skip policy the step reads the
        gradients once more (``"skip_step"``: one reduction before the update).

    Returns:
      A `PackedAdagrad` of four functions: ``init(params) -> state``
      (given `jax.ShapeDtypeStruct` leaves, which hold no values, `init`
      returns the abstract state, as ``jax.eval_shape(init, params)`` does:
      a target for restoring a checkpoint),
      ``step(state, grads) -> state``, ``params(state) -> params`` and
      ``sum_of_squares(state) -> tree of G``. Compute the gradients with
      respect to ``params(state)``; they come back as a tree like the
      parameters and `step` packs them (a single-leaf group needs no copy).

    Raises:
      ValueError, TypeError: for the hyperparameters, at construction, as
        `scale_by_adagrad`; for a non-bool `interleave` or `grad_buffer`
        (TypeError); at `init`, for integer or boolean parameter leaves
        (TypeError); at trace time, for gradients whose tree, shapes or dtypes
        differ from the parameters' (ValueError; integer or boolean gradients
        get a TypeError), naming the first differing path; TypeError for
        ``update`` (it is not a transformation: `PackedAdagrad`).

    Costs:
      A donated float32 step moves 20 bytes per element for a single-leaf
      group (read w, G, g; write w, G), against 28 for the per-leaf path on
      XLA:CPU; a group of several leaves adds 8 bytes per element to pack the
      gradients. The interleaved views ``params(state)`` read the real parts of
      the buffer with a stride: XLA fuses that read into elementwise consumers,
      but an operand of a matrix product is first copied out (4 bytes per
      element written). The state lives on one device; it does not keep
      sharding.

    Example:
      >>> import functools
      >>> import jax, jax.numpy as jnp
      >>> import adagrad_jax
      >>> opt = adagrad_jax.experimental.packed_adagrad(learning_rate=0.1)
      >>> state = opt.init({"b": jnp.zeros(2), "w": jnp.array([1.0, -2.0])})
      >>> def loss(params):
      ...     return jnp.sum(params["w"] ** 2) + jnp.sum(params["b"])
      >>> @functools.partial(jax.jit, donate_argnums=0)  # update in place
      ... def train_step(state):
      ...     grads = jax.grad(loss)(opt.params(state))
      ...     return opt.step(state, grads)
      >>> state = train_step(state)
      >>> opt.params(state)["w"]   # the first step moves w by lr * sign(g)
      Array([ 0.9, -1.9], dtype=float32)
      >>> opt.sum_of_squares(state)["w"]
      Array([ 4., 16.], dtype=float32)
    """
    checks.check_number(FN, "learning_rate", learning_rate, allow_schedule=True)
    checks.check_number(FN, "initial_accumulator_value", initial_accumulator_value)
    checks.check_number(FN, "eps", eps)
    checks.check_number(FN, "eps_root", eps_root)
    checks.check_number(FN, "weight_decay", weight_decay)
    accumulator_dtype = checks.check_accumulator_dtype(
        FN,
        accumulator_dtype,
        int8_refused="are not available here: the packed buffers hold G beside the weights"
        " in one float dtype. Use adagrad_jax.adagrad(accumulator_dtype='int8')",
    )
    interleave = checks.check_bool(FN, "interleave", interleave)
    grad_buffer = checks.check_bool(FN, "grad_buffer", grad_buffer)
    nonfinite = nonfinite_policy.check(FN, nonfinite)
    # The step runs this transformation's own update on the flat buffers, so
    # the numbers are those of the per-leaf path by construction.
    tx = adagrad(
        learning_rate,
        initial_accumulator_value,
        eps,
        eps_root=eps_root,
        weight_decay=weight_decay,
        accumulator_dtype=accumulator_dtype,
    )

    def init_fn(params):
        if any(isinstance(p, jax.ShapeDtypeStruct) for p in jax.tree.leaves(params)):
            # The state holds the parameters' values, which structs lack: give
            # the abstract state, as jax.eval_shape(init, params) does.
            return jax.eval_shape(init_fn, params)
        params = jax.tree.map(as_array, params)
        layout = build_layout(params, accumulator_dtype=accumulator_dtype, interleave=interleave)
        buffers, grad_buffers = initial_buffers(
            layout,
            params,
            initial_accumulator_value=initial_accumulator_value,
            grad_buffer=grad_buffer,
        )
        return PackedAdagradState(
            count=jnp.zeros([], jnp.int32),
            buffers=buffers,
            grads=grad_buffers,
            nonfinite_steps=None if nonfinite == "propagate" else jnp.zeros([], jnp.int32),
            layout=layout,
        )

    def step_fn(state, grads):
        layout = state.layout
        grad_leaves = check_grads(layout, grads)
        if nonfinite != "propagate" and state.nonfinite_steps is None:
            raise TypeError(
                f"{FN}(nonfinite={nonfinite!r}).step: the state has no nonfinite_steps;"
                " it was made by a packed_adagrad with nonfinite='propagate'. Pass the"
                " state that this optimizer's init returned."
            )
        # The policy is applied here rather than by running adagrad(nonfinite=...)
        # on each group: "skip_step" must judge all groups' gradients together.
        skips = nonfinite != "propagate"
        step_ok = nonfinite_policy.all_finite(grad_leaves) if skips else None
        new_buffers, new_grads = [], []
        for g, group in enumerate(layout.groups):
            w, s = unpack(group, state.buffers[g])
            pieces = [flat(x) for x, leaf in zip(grad_leaves, layout.leaves) if leaf.group == g]
            grad = concat(pieces)
            if state.grads[g] is not None:
                # Overwriting the whole donated buffer: XLA writes the
                # concatenation straight into it (no temporary, no copy).
                grad = jax.lax.dynamic_update_slice(state.grads[g], grad, (0,))
            new_grads.append(None if state.grads[g] is None else grad)
            chain_state = (
                optax.EmptyState(),
                ScaleByAdagradState(sum_of_squares=s),
                _learning_rate_state(learning_rate, state.count),
            )
            updates, chain_state = tx.update(grad, chain_state, w)
            w = optax.apply_updates(w, updates)
            packed = pack(group, w, chain_state[1].sum_of_squares)
            if skips:
                # Keep the old element where the policy skips (one select in
                # the same loop: each output element reads its own index).
                keep = nonfinite_policy.keep_mask(grad, nonfinite, step_ok)
                packed = tuple(
                    nonfinite_policy.keep_or_old(keep, new, old)
                    for new, old in zip(packed, state.buffers[g], strict=True)
                )
            new_buffers.append(packed)
        count = optax.safe_increment(state.count)
        nonfinite_steps = state.nonfinite_steps
        if skips:
            if nonfinite == "skip_step":
                count = nonfinite_policy.keep_or_old(step_ok, count, state.count)
            nonfinite_steps = nonfinite_policy.count_nonfinite(state.nonfinite_steps, step_ok)
        return PackedAdagradState(
            count=count,
            buffers=tuple(new_buffers),
            grads=tuple(new_grads),
            nonfinite_steps=nonfinite_steps,
            layout=layout,
        )

    return PackedAdagrad(init_fn, step_fn, params_tree, sum_of_squares_tree)


def _learning_rate_state(learning_rate: Any, count: jax.Array) -> Any:
    """The state `optax.scale_by_learning_rate(learning_rate)` has at `count`."""
    if callable(learning_rate):
        return optax.ScaleByScheduleState(count=count)
    return optax.EmptyState()
