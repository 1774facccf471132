"""The packed layout of `packed_adagrad`: flat buffers, their state, and views back into trees.

`packed_adagrad` (``diagonal/packed.py``) owns the parameters and the
accumulators in a few flat buffers, one per (parameter dtype, accumulator
dtype) group, so that a training step is one loop over memory per group
instead of two loops per leaf. This module lays the leaves out in groups
(`build_layout`), fills and reads the buffers (`initial_buffers`, `pack`,
`unpack`, `views`) and checks the gradients against the layout
(`check_grads`); ``packed.py`` runs the step on them.

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
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adagrad_jax._src.core import trees
from adagrad_jax._src.core.numerics import accumulator_dtype_for

FN = "packed_adagrad"


@dataclasses.dataclass(frozen=True)
class Leaf:
    """Where one parameter leaf lives: its group and its slice of that group."""

    group: int
    start: int
    shape: tuple[int, ...]
    dtype: jnp.dtype

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class Group:
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
    leaves: tuple[Leaf, ...]
    groups: tuple[Group, ...]


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


def build_layout(params: Any, *, accumulator_dtype: Any, interleave: bool) -> PackedLayout:
    """The groups of `params`' leaves (arrays) and each leaf's slice of its group.

    Raises:
      TypeError: for an integer or boolean parameter leaf, naming its path.
    """
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    group_index: dict[tuple[jnp.dtype, jnp.dtype], int] = {}
    group_sizes: list[int] = []
    leaves = []
    for path, p in paths_and_leaves:
        trees.check_param_dtype(FN, path, p.dtype)
        key = (jnp.dtype(p.dtype), accumulator_dtype_for(p.dtype, accumulator_dtype))
        if key not in group_index:
            group_index[key] = len(group_sizes)
            group_sizes.append(0)
        g = group_index[key]
        leaf = Leaf(g, group_sizes[g], tuple(np.shape(p)), key[0])
        group_sizes[g] += leaf.size
        leaves.append(leaf)
    groups = tuple(
        Group(w_dtype, g_dtype, size, interleave and _can_interleave(w_dtype, g_dtype))
        for (w_dtype, g_dtype), size in zip(group_index, group_sizes)
    )
    return PackedLayout(treedef, tuple(leaves), groups)


def initial_buffers(
    layout: PackedLayout, params: Any, *, initial_accumulator_value: Any, grad_buffer: bool
) -> tuple[tuple[tuple[jax.Array, ...], ...], tuple[jax.Array | None, ...]]:
    """The buffers of each group (w and G = tau) and the gradient buffers, for `params`."""
    flat_params = [flat(jnp.asarray(p)) for p in jax.tree.leaves(params)]
    buffers, grad_buffers = [], []
    for g, group in enumerate(layout.groups):
        pieces = [x for x, leaf in zip(flat_params, layout.leaves) if leaf.group == g]
        # A copy even for one leaf: donating the state must not delete the
        # caller's parameters.
        w = jnp.concatenate(pieces) if len(pieces) > 1 else jnp.array(pieces[0], copy=True)
        s = jnp.full((group.size,), initial_accumulator_value, group.accumulator_dtype)
        buffers.append(pack(group, w, s))
        keep = grad_buffer and len(pieces) > 1
        grad_buffers.append(jnp.zeros((group.size,), group.param_dtype) if keep else None)
    return tuple(buffers), tuple(grad_buffers)


def _can_interleave(param_dtype: jnp.dtype, acc_dtype: jnp.dtype) -> bool:
    """True if w fits exactly in the real part of a complex of G's dtype."""
    if not jnp.issubdtype(param_dtype, jnp.floating):
        return False  # complex parameters need three reals per element
    if acc_dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        return False  # no complex type with bfloat16 or float16 parts
    w, g = jnp.finfo(param_dtype), jnp.finfo(acc_dtype)
    return w.nmant <= g.nmant and w.minexp >= g.minexp and w.maxexp <= g.maxexp


def flat(x: jax.Array) -> jax.Array:
    return jnp.reshape(x, (-1,))


def concat(pieces: list[jax.Array]) -> jax.Array:
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces)


def _split(flat_array: jax.Array, leaves: list[Leaf]) -> list[jax.Array]:
    """Slices `flat_array` into the given leaves (a single leaf needs no slice)."""
    if len(leaves) == 1:
        return [jnp.reshape(flat_array, leaves[0].shape)]
    ends = np.cumsum([leaf.size for leaf in leaves])[:-1].tolist()
    pieces = jnp.split(flat_array, ends)
    return [jnp.reshape(piece, leaf.shape) for piece, leaf in zip(pieces, leaves)]


def pack(group: Group, w: jax.Array, s: jax.Array) -> tuple[jax.Array, ...]:
    """A group's buffers holding the flat parameters `w` and accumulators `s`."""
    if group.interleaved:
        return (jax.lax.complex(w.astype(group.accumulator_dtype), s),)
    return (w, s)


def unpack(group: Group, buffers: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
    """The flat parameters and accumulators (w, G) held in a group's buffers."""
    if group.interleaved:
        (buffer,) = buffers
        return jnp.real(buffer).astype(group.param_dtype), jnp.imag(buffer)
    return buffers[0], buffers[1]


def views(state: PackedAdagradState, pick: Callable[..., jax.Array]) -> Any:
    """The tree of `pick(group, buffers)` sliced back into the leaves' shapes."""
    layout = state.layout
    out: list[Any] = [None] * len(layout.leaves)
    for g, group in enumerate(layout.groups):
        index = [i for i, leaf in enumerate(layout.leaves) if leaf.group == g]
        pieces = _split(pick(group, state.buffers[g]), [layout.leaves[i] for i in index])
        for i, piece in zip(index, pieces):
            out[i] = piece
    return jax.tree.unflatten(layout.treedef, out)


def params_tree(state: PackedAdagradState) -> Any:
    """The tree of parameters held in a packed state."""
    return views(state, lambda group, buffers: unpack(group, buffers)[0])


def sum_of_squares_tree(state: PackedAdagradState) -> Any:
    """The tree of accumulators G held in a packed state (`adagrad_jax.accumulators` reads it)."""
    return views(state, lambda group, buffers: unpack(group, buffers)[1])


def as_array(x: Any) -> Any:
    """A Python scalar leaf as a JAX array (arrays and structs unchanged)."""
    return x if hasattr(x, "dtype") and hasattr(x, "shape") else jnp.asarray(x)


def check_grads(layout: PackedLayout, grads: Any) -> list[Any]:
    """The leaves of `grads`, after checking tree, shapes and dtypes.

    The dtype must be the parameter's own (the buffers hold one dtype per
    group); float or complex is checked first, so that an integer gradient
    gets the same TypeError as on the per-leaf path.
    """
    grads = jax.tree.map(as_array, grads)
    paths_and_leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
    params_like = jax.tree.unflatten(
        layout.treedef, [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in layout.leaves]
    )
    trees.check_same_structure(FN, "grads", grads, "params", params_like)
    trees.check_same_shapes(f"{FN}.step", "grads", grads, "params", params_like)
    trees.check_inexact_leaves(f"{FN}.step", "grads", grads)
    for (path, x), leaf in zip(paths_and_leaves, layout.leaves):
        if jnp.dtype(x.dtype) != leaf.dtype:
            raise ValueError(
                f"{FN}.step: grads{jax.tree_util.keystr(path)} has shape"
                f" {tuple(np.shape(x))} and dtype {jnp.dtype(x.dtype).name}; the"
                f" parameter has shape {leaf.shape} and dtype {leaf.dtype.name}."
                " Pass the gradient with respect to params(state)."
            )
    return [x for _, x in paths_and_leaves]
