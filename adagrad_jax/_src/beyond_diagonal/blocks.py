"""How the matrix preconditioners cut a parameter leaf into blocks, and their per-leaf state.

Full-matrix Adagrad flattens a leaf of n coordinates (row-major) and cuts it
into blocks of b: one blocked dimension, n. Shampoo keeps a leaf's dimensions
larger than 1 (when there are at least two; otherwise the leaf is
preconditioned diagonally) and cuts each into blocks: k blocked dimensions.
Both are a `Layout`, and the rest is written once for both:

- `layout` / `layout_from_state`: a leaf's `Layout`, from a block size or from
  the statistics in the state;
- `to_blocks` / `from_blocks`: a leaf as its (N, b_1, ..., b_k) blocks and back;
- `check_statistics`: the statistics in the state fit the gradients;
- `LeafState` and `per_leaf`: each leaf's part of the state, built leaf by leaf
  and split into trees like the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Layout(NamedTuple):
    """How a leaf is cut into blocks: its blocked dimensions and their block sizes.

    >>> Layout(dims=(5, 3), blocks=(2, 3)).grid   # ceil(5 / 2) x ceil(3 / 3)
    (3, 1)
    """

    dims: tuple[int, ...]
    blocks: tuple[int, ...]

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(-(-d // b) for d, b in zip(self.dims, self.blocks))

    @property
    def num_blocks(self) -> int:
        return math.prod(self.grid)


def blocked_dims(shape: tuple[int, ...], *, flatten: bool) -> tuple[int, ...]:
    """The dimensions a leaf of `shape` is blocked along; () for a diagonal leaf.

    ``flatten=True`` (full-matrix Adagrad): one, the leaf's size. Otherwise
    (Shampoo): its dimensions larger than 1, when there are at least two.

    >>> blocked_dims((4, 1, 3), flatten=True), blocked_dims((4, 1, 3), flatten=False)
    ((12,), (4, 3))
    >>> blocked_dims((1, 7), flatten=False)
    ()
    """
    if flatten:
        return (math.prod(shape),)
    dims = tuple(d for d in shape if d > 1)
    return dims if len(dims) >= 2 else ()


def layout(shape: tuple[int, ...], block_size: int, *, flatten: bool) -> Layout | None:
    """The blocked layout of a leaf (blocks of at most `block_size`), or None for a diagonal one."""
    dims = blocked_dims(shape, flatten=flatten)
    if not dims:
        return None
    return Layout(dims, tuple(max(1, min(d, block_size)) for d in dims))


def layout_from_state(
    shape: tuple[int, ...], stats: tuple[jax.Array, ...], *, flatten: bool
) -> Layout:
    """The layout the (N, b_i, b_i) statistics `stats` of a leaf of `shape` were built for."""
    return Layout(blocked_dims(shape, flatten=flatten), tuple(s.shape[-1] for s in stats))


def to_blocks(g: jax.Array, lay: Layout, dtype: Any) -> jax.Array:
    """(N, b_1, ..., b_k) blocks of g in `dtype` (unit dimensions dropped, edges zero-padded)."""
    k = len(lay.dims)
    x = g.astype(dtype).reshape(lay.dims)
    pad = [(0, n * b - d) for d, b, n in zip(lay.dims, lay.blocks, lay.grid)]
    x = jnp.pad(x, pad)
    x = x.reshape([v for n, b in zip(lay.grid, lay.blocks) for v in (n, b)])
    x = x.transpose([2 * i for i in range(k)] + [2 * i + 1 for i in range(k)])
    return x.reshape((lay.num_blocks, *lay.blocks))


def from_blocks(x: jax.Array, lay: Layout, shape: tuple[int, ...]) -> jax.Array:
    """The leaf of `shape` whose blocks are `x` (the inverse of `to_blocks`, padding cut off)."""
    k = len(lay.dims)
    x = x.reshape((*lay.grid, *lay.blocks))
    x = x.transpose([j for i in range(k) for j in (i, k + i)])
    x = x.reshape([n * b for n, b in zip(lay.grid, lay.blocks)])
    x = x[tuple(slice(0, d) for d in lay.dims)]
    return x.reshape(shape)


def _fits(stacks: Any, dims: tuple[int, ...]) -> bool:
    """Whether `stacks` holds one square (N, b_i, b_i) stack per blocked dimension d_i."""
    if not isinstance(stacks, tuple) or len(stacks) != len(dims):
        return False
    square = all(
        getattr(s, "ndim", None) == 3 and s.shape[1] == s.shape[2] and 1 <= s.shape[1] <= max(d, 1)
        for s, d in zip(stacks, dims)
    )
    if not square or not stacks:
        return square
    lay = Layout(dims, tuple(s.shape[-1] for s in stacks))
    return all(s.shape[0] == lay.num_blocks for s in stacks)


def check_statistics(caller: str, updates: Any, statistics: Any, *, flatten: bool) -> None:
    """Checks each gradient leaf's dtype and that its statistics are blocks covering it.

    A leaf's statistics are one (N, b_i, b_i) stack per blocked dimension
    d_i (`blocked_dims`), with 1 <= b_i <= d_i and N the number of blocks of
    that layout: a tuple of stacks (Shampoo), or the one stack itself
    (``flatten=True``, full-matrix Adagrad). `statistics` must have the tree
    structure of `updates` down to its leaves.

    Raises:
      TypeError: for a gradient leaf that is not real floating, naming its path.
      ValueError: for statistics that do not fit their gradient, naming the path.
    """
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    for (path, g), stats in zip(paths_and_leaves, treedef.flatten_up_to(statistics)):  # type: ignore[attr-defined]
        where = jax.tree_util.keystr(path)
        if not jnp.issubdtype(g.dtype, jnp.floating):
            raise TypeError(
                f"{caller}: updates{where} has dtype {jnp.dtype(g.dtype).name}; {caller} needs"
                " real floating gradients."
            )
        dims = blocked_dims(tuple(g.shape), flatten=flatten)
        stacks = (stats,) if flatten else stats
        if not _fits(stacks, dims):
            shapes = [np.shape(s) for s in stacks] if isinstance(stacks, tuple) else stacks
            shown = f"has shape {shapes[0]}" if flatten else f"holds {shapes}"
            raise ValueError(
                f"{caller}: state.statistics{where} {shown}: not a stack of square (N, b, b)"
                f" blocks for each blocked dimension {dims} of updates{where} (shape"
                f" {tuple(g.shape)}). Pass the state that init returned for these parameters."
            )


class LeafState(NamedTuple):
    """One parameter leaf's part of a matrix optimizer's state (`per_leaf` builds a tree of them).

    `statistics` and `preconditioners` are one stack (full-matrix Adagrad) or
    a tuple of stacks (Shampoo); `sum_of_squares` is Shampoo's diagonal
    accumulator (None for full-matrix Adagrad).
    """

    statistics: Any
    preconditioners: Any
    sum_of_squares: Any = None


def per_leaf(leaf_state: Callable[[Any, Any], LeafState], params: Any) -> LeafState:
    """`leaf_state(path, p)` for every parameter leaf, split into a `LeafState` of three trees.

    Each of the three trees has the parameters' structure. The results are
    told apart by their class, `LeafState`: parameter trees may hold tuples
    (and optax.masked's MaskedNode, an empty one) of their own.
    """
    states = jax.tree_util.tree_map_with_path(leaf_state, params)
    is_state = lambda x: isinstance(x, LeafState)
    return LeafState(
        statistics=jax.tree.map(lambda s: s.statistics, states, is_leaf=is_state),
        preconditioners=jax.tree.map(lambda s: s.preconditioners, states, is_leaf=is_state),
        sum_of_squares=jax.tree.map(lambda s: s.sum_of_squares, states, is_leaf=is_state),
    )
