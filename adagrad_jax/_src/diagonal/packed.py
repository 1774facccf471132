"""The packed (multi-tensor, single-pass) Adagrad training state (experimental).

Public as `adagrad_jax.experimental.packed_adagrad` (and, for 0.1 code, as
`adagrad_jax.packed_adagrad`). It wins the optimizer step alone; whole training
steps of models that feed their weights to matrix products lose, because those
read the weights through strided views of the packed buffers
(`benchmarks/whole_step.py`).

`packed_adagrad` owns the parameters and the accumulators in a few flat
buffers, one per (parameter dtype, accumulator dtype) group, so that a training
step is one loop over memory per group instead of two loops per leaf.

Why a packed layout: XLA:CPU has no multi-output fusion, so the per-leaf update
``G += g*g; w -= lr*g/sqrt(G)`` compiles to two loops (read G, g, write G; then
read w, G, g, write w: 28 bytes per float32 element). A loop that writes both w
and G must produce one array, and that array can only be updated in place when
each output element depends on the input element at the same index. A complex
number holds two reals at one index, so the interleaved layout stores w in the
real part and G in the imaginary part: one in-place loop, 20 bytes per element
(read w, G and g, write w and G), the minimum. A (2, n) or concatenated layout
also gives one loop, but reads across rows, so XLA adds a full copy after it.

Gradients arrive as a tree and a group of several leaves needs them as one flat
array. XLA:CPU does not fuse that concatenation into the update loop, so it is
written to memory once (8 more bytes per element). Written to a fresh temporary,
it would cost a new allocation at every step, which above 32 MiB means fresh
pages from the kernel (glibc serves such blocks with mmap), measured at more
than the whole update costs. So the state keeps one flat gradient buffer per multi-leaf group,
donated and overwritten in place.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adagrad_jax._src.core import checks, nonfinite_policy, trees
from adagrad_jax._src.core.docs import shared_args
from adagrad_jax._src.core.nonfinite_policy import all_finite
from adagrad_jax._src.core.numerics import accumulator_dtype_for
from adagrad_jax._src.diagonal.adagrad import ScaleByAdagradState, adagrad

_FN = "packed_adagrad"


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """Where one parameter leaf lives: its group and its slice of that group."""

    group: int
    start: int
    shape: tuple[int, ...]
    dtype: jnp.dtype

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class _Group:
    """Leaves that share a parameter dtype and an accumulator dtype."""

    param_dtype: jnp.dtype
    accumulator_dtype: jnp.dtype
    size: int
    interleaved: bool  # one complex buffer (w + iG); else two buffers (w, G)


@dataclasses.dataclass(frozen=True)
class PackedLayout:
    """Static description of a packed state: hashable, so jit never retraces.

    Attributes:
      treedef: the tree structure of the parameters.
      leaves: for each leaf (in `jax.tree.leaves` order), its group, offset,
        shape and dtype.
      groups: for each group, the parameter and accumulator dtypes, the total
        number of elements and whether the group is interleaved.
    """

    treedef: Any
    leaves: tuple[_Leaf, ...]
    groups: tuple[_Group, ...]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedAdagradState:
    """State of `packed_adagrad`: the parameters and accumulators themselves.

    Attributes:
      count: int32 scalar, the number of steps taken (the learning-rate
        schedule sees it before it is incremented, as in optax).
      buffers: one tuple per group. An interleaved group holds one complex
        array whose real part is the parameters (in the accumulator's real
        dtype, which holds every parameter value exactly) and whose imaginary
        part is the sum of squares G. Other groups hold two arrays: the
        flattened parameters and G.
      grads: one entry per group: the last gradients of the group, flattened
        (zeros before the first step), for groups of several leaves when
        `grad_buffer` is on; None otherwise.
      nonfinite_steps: int32 scalar, the number of steps whose gradients had
        a NaN or +-inf entry, with ``nonfinite="skip_coordinate"`` or
        ``"skip_step"``; None with ``"propagate"`` (nothing is checked).
      layout: static `PackedLayout` (not a pytree leaf).
    """

    count: jax.Array
    buffers: tuple[tuple[jax.Array, ...], ...]
    grads: tuple[jax.Array | None, ...]
    nonfinite_steps: jax.Array | None
    layout: PackedLayout = dataclasses.field(metadata={"static": True})


def _consumer(module: str) -> str | None:
    """How to name an optax or flax module that reads `init` (None: user code)."""
    top = module.partition(".")[0]
    if top == "flax":
        return "flax's nnx.Optimizer (or another flax wrapper)"
    if top == "optax":
        return "an optax combinator (optax.chain, optax.masked, optax.MultiSteps, ...)"
    return None


def _not_a_transformation(where: str | None) -> TypeError:
    start = (
        f"{_FN}(...) has no update(updates, state, params)"
        if where is None
        else f"{_FN}(...) was given to {where}, which needs an optax GradientTransformation"
        " (init and update)"
    )
    return TypeError(
        f"{start}. It is a training state that owns the parameters (init(params) ->"
        " state, step(state, grads) -> state, params(state) -> params), not an optax"
        " GradientTransformation. Use adagrad_jax.adagrad(...) there: the same rule, as a"
        " drop-in transformation. To train with the packed state, jit opt.step"
        " yourself (see adagrad_jax.experimental.packed_adagrad)."
    )


class PackedAdagrad:
    """The functions of a packed Adagrad training state (see `packed_adagrad`).

    Not an `optax.GradientTransformation`: it has no ``update``. Given to
    ``nnx.Optimizer``, ``optax.chain`` or another optax or flax wrapper, it
    fails at once (when that code reads ``init``) with a TypeError that points
    to `adagrad_jax.adagrad`, instead of an AttributeError at the first update.

    Attributes:
      init: params -> `PackedAdagradState` (copies the parameters in).
      step: (state, grads) -> new state; grads is a tree like the params.
      params: state -> the parameter tree (fresh arrays or fused views).
      sum_of_squares: state -> the tree of accumulators G.
    """

    __slots__ = ("_init", "params", "step", "sum_of_squares")

    def __init__(
        self,
        init: Callable[[optax.Params], PackedAdagradState],
        step: Callable[[PackedAdagradState, optax.Updates], PackedAdagradState],
        params: Callable[[PackedAdagradState], optax.Params],
        sum_of_squares: Callable[[PackedAdagradState], optax.Updates],
    ):
        self._init = init
        self.step = step
        self.params = params
        self.sum_of_squares = sum_of_squares

    @property
    def init(self) -> Callable[[optax.Params], PackedAdagradState]:
        # optax.chain, optax.MultiSteps and nnx.Optimizer read `tx.init` when
        # they are built (nnx.Optimizer also calls it); user code reads it to
        # build the state. The module of the reading frame tells them apart, so
        # that the misuse fails where it is written, with the fix in the message.
        where = _consumer(sys._getframe(1).f_globals.get("__name__", ""))
        if where is not None:
            raise _not_a_transformation(where)
        return self._init

    @property
    def update(self) -> Callable[..., Any]:
        raise _not_a_transformation(None)

    def __repr__(self) -> str:
        return f"PackedAdagrad(init, step, params, sum_of_squares) of {_FN}"


def _can_interleave(param_dtype: jnp.dtype, acc_dtype: jnp.dtype) -> bool:
    """True if w fits exactly in the real part of a complex of G's dtype."""
    if not jnp.issubdtype(param_dtype, jnp.floating):
        return False  # complex parameters need three reals per element
    if acc_dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        return False  # no complex type with bfloat16 or float16 parts
    w, g = jnp.finfo(param_dtype), jnp.finfo(acc_dtype)
    return w.nmant <= g.nmant and w.minexp >= g.minexp and w.maxexp <= g.maxexp


def _flat(x: jax.Array) -> jax.Array:
    return jnp.reshape(x, (-1,))


def _concat(pieces: list[jax.Array]) -> jax.Array:
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces)


def _split(flat: jax.Array, leaves: list[_Leaf]) -> list[jax.Array]:
    """Slices `flat` into the given leaves (a single leaf needs no slice)."""
    if len(leaves) == 1:
        return [jnp.reshape(flat, leaves[0].shape)]
    ends = np.cumsum([leaf.size for leaf in leaves])[:-1].tolist()
    pieces = jnp.split(flat, ends)
    return [jnp.reshape(piece, leaf.shape) for piece, leaf in zip(pieces, leaves)]


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
    `optax.GradientTransformation`, so `nnx.Optimizer`, `optax.chain` and the
    other optax wrappers refuse it when they are built. It halves the optimizer
    step alone, but in whole training steps a model whose weights feed matrix
    products reads them through strided views (a copy per step), and there
    `adagrad` is as fast or faster (README, Performance).

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
        the real counterpart for complex ones.
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
        get a TypeError), naming the first differing path.

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
    checks.check_number(_FN, "learning_rate", learning_rate, allow_schedule=True)
    checks.check_number(_FN, "initial_accumulator_value", initial_accumulator_value)
    checks.check_number(_FN, "eps", eps)
    checks.check_number(_FN, "eps_root", eps_root)
    checks.check_number(_FN, "weight_decay", weight_decay)
    accumulator_dtype = checks.check_float_dtype(_FN, "accumulator_dtype", accumulator_dtype)
    for name, flag in (("interleave", interleave), ("grad_buffer", grad_buffer)):
        if not isinstance(flag, bool):
            raise TypeError(f"{_FN}({name}={flag!r}): {name} must be a bool.")
    nonfinite = nonfinite_policy.check(_FN, nonfinite)
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
        params = jax.tree.map(_as_array, params)
        paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        group_index: dict[tuple[jnp.dtype, jnp.dtype], int] = {}
        group_sizes: list[int] = []
        leaves = []
        for path, p in paths_and_leaves:
            trees.check_param_dtype(_FN, path, p.dtype)
            key = (jnp.dtype(p.dtype), accumulator_dtype_for(p.dtype, accumulator_dtype))
            if key not in group_index:
                group_index[key] = len(group_sizes)
                group_sizes.append(0)
            g = group_index[key]
            leaf = _Leaf(g, group_sizes[g], tuple(np.shape(p)), key[0])
            group_sizes[g] += leaf.size
            leaves.append(leaf)
        groups = tuple(
            _Group(w_dtype, g_dtype, size, interleave and _can_interleave(w_dtype, g_dtype))
            for (w_dtype, g_dtype), size in zip(group_index, group_sizes)
        )
        layout = PackedLayout(treedef, tuple(leaves), groups)
        flat_params = [_flat(jnp.asarray(p)) for _, p in paths_and_leaves]
        buffers, grad_buffers = [], []
        for g, group in enumerate(groups):
            pieces = [x for x, leaf in zip(flat_params, leaves) if leaf.group == g]
            # A copy even for one leaf: donating the state must not delete the
            # caller's parameters.
            w = jnp.concatenate(pieces) if len(pieces) > 1 else jnp.array(pieces[0], copy=True)
            s = jnp.full((group.size,), initial_accumulator_value, group.accumulator_dtype)
            buffers.append(_pack(group, w, s))
            keep = grad_buffer and len(pieces) > 1
            grad_buffers.append(jnp.zeros((group.size,), group.param_dtype) if keep else None)
        return PackedAdagradState(
            count=jnp.zeros([], jnp.int32),
            buffers=tuple(buffers),
            grads=tuple(grad_buffers),
            nonfinite_steps=None if nonfinite == "propagate" else jnp.zeros([], jnp.int32),
            layout=layout,
        )

    def step_fn(state, grads):
        layout = state.layout
        grad_leaves = _check_grads(layout, grads)
        if nonfinite != "propagate" and state.nonfinite_steps is None:
            raise TypeError(
                f"{_FN}(nonfinite={nonfinite!r}).step: the state has no nonfinite_steps;"
                " it was made by a packed_adagrad with nonfinite='propagate'. Pass the"
                " state that this optimizer's init returned."
            )
        # The policy is applied here rather than by running adagrad(nonfinite=...)
        # on each group: "skip_step" must judge all groups' gradients together.
        step_ok = all_finite(grad_leaves) if nonfinite != "propagate" else None
        new_buffers, new_grads = [], []
        for g, group in enumerate(layout.groups):
            w, s = _unpack(group, state.buffers[g])
            pieces = [_flat(x) for x, leaf in zip(grad_leaves, layout.leaves) if leaf.group == g]
            grad = _concat(pieces)
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
            packed = _pack(group, w, chain_state[1].sum_of_squares)
            if nonfinite != "propagate":
                # Keep the old element where the policy skips (one select in
                # the same loop: each output element reads its own index).
                skipped = ~jnp.isfinite(grad) if nonfinite == "skip_coordinate" else ~step_ok
                packed = tuple(
                    jnp.where(skipped, old, new)
                    for old, new in zip(state.buffers[g], packed, strict=True)
                )
            new_buffers.append(packed)
        count = optax.safe_increment(state.count)
        nonfinite_steps = state.nonfinite_steps
        if step_ok is not None:
            if nonfinite == "skip_step":
                count = jnp.where(step_ok, count, state.count)
            nonfinite_steps = state.nonfinite_steps + (~step_ok).astype(jnp.int32)
        return PackedAdagradState(
            count=count,
            buffers=tuple(new_buffers),
            grads=tuple(new_grads),
            nonfinite_steps=nonfinite_steps,
            layout=layout,
        )

    def params_fn(state):
        return _views(state, lambda group, buffers: _unpack(group, buffers)[0])

    def sum_of_squares_fn(state):
        return sum_of_squares_tree(state)

    return PackedAdagrad(init_fn, step_fn, params_fn, sum_of_squares_fn)


def _learning_rate_state(learning_rate: Any, count: jax.Array) -> Any:
    """The state `optax.scale_by_learning_rate(learning_rate)` has at `count`."""
    if callable(learning_rate):
        return optax.ScaleByScheduleState(count=count)
    return optax.EmptyState()


def _pack(group: _Group, w: jax.Array, s: jax.Array) -> tuple[jax.Array, ...]:
    if group.interleaved:
        return (jax.lax.complex(w.astype(group.accumulator_dtype), s),)
    return (w, s)


def _unpack(group: _Group, buffers: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
    if group.interleaved:
        (buffer,) = buffers
        return jnp.real(buffer).astype(group.param_dtype), jnp.imag(buffer)
    return buffers[0], buffers[1]


def _views(state: PackedAdagradState, pick: Callable[..., jax.Array]) -> Any:
    """The tree of `pick(group, buffers)` sliced back into the leaves' shapes."""
    layout = state.layout
    out: list[Any] = [None] * len(layout.leaves)
    for g, group in enumerate(layout.groups):
        index = [i for i, leaf in enumerate(layout.leaves) if leaf.group == g]
        pieces = _split(pick(group, state.buffers[g]), [layout.leaves[i] for i in index])
        for i, piece in zip(index, pieces):
            out[i] = piece
    return jax.tree.unflatten(layout.treedef, out)


def _as_array(x: Any) -> Any:
    """A Python scalar leaf as a JAX array (arrays and structs unchanged)."""
    return x if hasattr(x, "dtype") and hasattr(x, "shape") else jnp.asarray(x)


def _check_grads(layout: PackedLayout, grads: Any) -> list[Any]:
    """The leaves of `grads`, after checking tree, shapes and dtypes.

    The dtype must be the parameter's own (the buffers hold one dtype per
    group); float or complex is checked first, so that an integer gradient
    gets the same TypeError as on the per-leaf path.
    """
    grads = jax.tree.map(_as_array, grads)
    paths_and_leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
    params_like = jax.tree.unflatten(
        layout.treedef, [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in layout.leaves]
    )
    trees.check_same_structure(_FN, "grads", grads, "params", params_like)
    trees.check_same_shapes(f"{_FN}.step", "grads", grads, "params", params_like)
    trees.check_inexact_leaves(f"{_FN}.step", "grads", grads)
    for (path, x), leaf in zip(paths_and_leaves, layout.leaves):
        if jnp.dtype(x.dtype) != leaf.dtype:
            raise ValueError(
                f"{_FN}.step: grads{jax.tree_util.keystr(path)} has shape"
                f" {tuple(np.shape(x))} and dtype {jnp.dtype(x.dtype).name}; the"
                f" parameter has shape {leaf.shape} and dtype {leaf.dtype.name}."
                " Pass the gradient with respect to params(state)."
            )
    return [x for _, x in paths_and_leaves]


def sum_of_squares_tree(state: PackedAdagradState) -> Any:
    """The tree of accumulators G held in a packed state (`adagrad_jax.accumulators` reads it)."""
    return _views(state, lambda group, buffers: _unpack(group, buffers)[1])
