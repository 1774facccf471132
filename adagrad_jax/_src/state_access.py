"""Reading optimizer state: `accumulators` and `restore_structure`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.beyond_diagonal.adagrad_norm import ScaleByAdagradNormState
from adagrad_jax._src.beyond_diagonal.full_matrix import ScaleByFullMatrixAdagradState
from adagrad_jax._src.beyond_diagonal.shampoo import ScaleByShampooState
from adagrad_jax._src.compat.fbgemm import FbgemmAdagradState
from adagrad_jax._src.core import quantized
from adagrad_jax._src.diagonal import packed
from adagrad_jax._src.diagonal.adagrad import ScaleByAdagradState
from adagrad_jax._src.diagonal.adagrad_momentum import ScaleByAdagradMomentumState
from adagrad_jax._src.diagonal.packed import PackedAdagradState
from adagrad_jax._src.diagonal.sm3 import ScaleBySM3State
from adagrad_jax._src.regularized.adagrad_da import AdagradDAState
from adagrad_jax._src.regularized.ftrl import FtrlState
from adagrad_jax._src.regularized.proximal_adagrad import ProximalAdagradState

# Which field of each state holds the running sum of squared gradients.
_ACCUMULATOR_FIELD = {
    ScaleByAdagradState: "sum_of_squares",
    ProximalAdagradState: "sum_of_squares",
    AdagradDAState: "sum_of_squares",
    FtrlState: "sum_of_squares",
    FbgemmAdagradState: "sum_of_squares",
    ScaleByShampooState: "sum_of_squares",
    ScaleByAdagradNormState: "sum_of_squares",
    ScaleByFullMatrixAdagradState: "statistics",
    ScaleBySM3State: "accumulators",
    ScaleByAdagradMomentumState: "accumulator",
    PackedAdagradState: None,  # read through the packed layout
}
_STATES = tuple(_ACCUMULATOR_FIELD)

_NO_TARGET_HINT = (
    "a checkpoint restored without a target (Orbax restores NamedTuples as dicts and tuples"
    " as lists). Restore with a target, e.g. checkpointer.restore(path,"
    " jax.eval_shape(tx.init, params)), or rebuild the structure with"
    " adagrad_jax.restore_structure(jax.eval_shape(tx.init, params), restored)."
)


def _unwrap(x: Any) -> Any:
    """A leaf held in a Flax `nnx.Variable` (as `nnx.Optimizer` keeps state) as its value."""
    if not hasattr(x, "dtype") and callable(getattr(x, "get_value", None)):
        return x.get_value()
    return x


def _packed_sum_of_squares(state: PackedAdagradState) -> Any:
    return packed.sum_of_squares_tree(state)


def _has_key(tree: Any, key: str) -> bool:
    if isinstance(tree, Mapping):
        return key in tree or any(_has_key(v, key) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return any(_has_key(v, key) for v in tree)
    return False


def accumulators(opt_state: Any) -> Any:
    """The running sums of squared gradients in any optimizer state of this package.

    Finds every state of an `adagrad_jax` optimizer inside ``opt_state``,
    however it is nested (``optax.chain``, ``optax.masked``,
    ``optax.multi_transform``, ``optax.inject_hyperparams``,
    ``optax.MultiSteps``, ``optax.apply_if_finite``, a Flax
    ``nnx.Optimizer``'s ``opt_state``), and returns their accumulators as one
    tree like the parameters:

    - `adagrad`, `scale_by_adagrad`, `sparse_adagrad`, `proximal_adagrad`,
      `adagrad_da`, `ftrl`, the `compat` presets: ``sum_of_squares``, G (one
      entry per coordinate; one per row with ``row_wise=True`` and for
      `compat.fbgemm_rowwise_adagrad`, whose G is FBGEMM's ``momentum1``);
    - `shampoo`: ``sum_of_squares``, its diagonal Adagrad sum A (the
      Kronecker statistics stay in ``ScaleByShampooState.statistics``);
    - `adagrad_norm`: ``sum_of_squares``, one scalar per leaf (a single
      scalar, not a tree, with ``per_leaf=False``);
    - `full_matrix_adagrad`: ``statistics``, each leaf's blocks of G = sum of
      g g^T, shape (blocks, b, b);
    - `sm3`: ``accumulators``, for each leaf a tuple: one vector per axis
      (rank >= 2), or its one full accumulator (scalars and vectors);
    - `adagrad_momentum`, `scale_by_adagrad_momentum`: ``accumulator``, a
      (a sum of squared gradients, or their average with ``beta2 < 1``);
    - `experimental.packed_adagrad`: G sliced out of the packed buffers.

    Leaves that no optimizer of this package trains (masked out, or given to
    another optimizer by ``multi_transform``) are ``None``. The arrays are the
    state's own, not copies, except for `ftrl`, `adagrad_da` and
    `adagrad_momentum` with ``stack_slots=True``, which keep two slots in one array per
    parameter: there they are slices of it (`ftrl`'s n is
    ``state.slots[0][..., 0]``, `adagrad_da`'s G ``state.slots[0][..., 1]``).

    Args:
      opt_state: the state returned by ``tx.init`` or ``tx.update`` (any
        pytree holding states of this package).

    Returns:
      A tree like the parameters (see above).

    Raises:
      ValueError: if ``opt_state`` holds no state of this package, or states
        of several of its optimizers that accumulate for the same leaf.
      TypeError: if ``opt_state`` is made of plain dicts and lists (a
        checkpoint restored without a target); the message names the fix.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import adagrad_jax
      >>> params = {"emb": jnp.zeros((3, 2)), "w": jnp.zeros(2)}
      >>> tx = optax.multi_transform(
      ...     {"table": adagrad_jax.adagrad(0.1), "dense": optax.sgd(1e-3)},
      ...     {"emb": "table", "w": "dense"})
      >>> state = tx.init(params)
      >>> grads = {"emb": jnp.full((3, 2), 2.0), "w": jnp.ones(2)}
      >>> _, state = tx.update(grads, state, params)
      >>> adagrad_jax.accumulators(state)
      {'emb': Array([[4., 4.],
             [4., 4.],
             [4., 4.]], dtype=float32), 'w': None}
    """
    found = [
        leaf
        for leaf in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, _STATES))
        if isinstance(leaf, _STATES)
    ]
    if not found:
        if _has_key(opt_state, "sum_of_squares") or _has_key(opt_state, "statistics"):
            raise TypeError(
                "adagrad_jax.accumulators(opt_state): opt_state is made of plain dicts and"
                f" lists, not optimizer states: {_NO_TARGET_HINT}"
            )
        raise ValueError(
            "adagrad_jax.accumulators(opt_state): opt_state holds no state of an adagrad_jax"
            f" optimizer (looked for {', '.join(c.__name__ for c in _STATES)}); got"
            f" {type(opt_state).__name__}."
        )
    trees = []
    for state in found:
        field = _ACCUMULATOR_FIELD[type(state)]
        tree = (
            _packed_sum_of_squares(state)  # type: ignore[arg-type]  # the packed state
            if field is None
            else getattr(state, field)
        )
        trees.append(
            jax.tree.map(
                lambda x: (
                    None
                    if isinstance(x, optax.MaskedNode)
                    else quantized.dequantize(x)
                    if quantized.is_int8(x)
                    else _unwrap(x)
                ),
                tree,
                is_leaf=lambda x: (
                    isinstance(x, optax.MaskedNode)
                    or hasattr(x, "get_value")
                    or quantized.is_int8(x)
                ),
            )
        )
    if len(trees) == 1:
        return trees[0]
    structures = {jax.tree.structure(t, is_leaf=lambda x: x is None) for t in trees}
    if len(structures) > 1:
        raise ValueError(
            "adagrad_jax.accumulators(opt_state): opt_state holds states of several"
            f" optimizers ({', '.join(type(s).__name__ for s in found)}) whose accumulators"
            " have different structures; read each state's field directly."
        )

    def merge(path: Any, *leaves: Any) -> Any:
        present = [leaf for leaf in leaves if leaf is not None]
        if len(present) > 1:
            raise ValueError(
                f"adagrad_jax.accumulators(opt_state): the parameter at"
                f" {jax.tree_util.keystr(path)} has accumulators in several states"
                f" ({', '.join(type(s).__name__ for s in found)}); read each state's"
                " field directly."
            )
        return present[0] if present else None

    return jax.tree_util.tree_map_with_path(
        merge, trees[0], *trees[1:], is_leaf=lambda x: x is None
    )


def _child(restored: Any, key: Any) -> Any:
    if isinstance(key, jax.tree_util.GetAttrKey):
        name = key.name
        return restored[name] if isinstance(restored, Mapping) else getattr(restored, name)
    if isinstance(key, jax.tree_util.SequenceKey):
        if isinstance(restored, Mapping):
            return restored[key.idx] if key.idx in restored else restored[str(key.idx)]
        if isinstance(restored, Sequence):
            return restored[key.idx]
        raise KeyError(key.idx)
    if isinstance(key, jax.tree_util.DictKey):
        if key.key in restored:
            return restored[key.key]
        return restored[str(key.key)]
    raise KeyError(key)


# 0.2 kept the slots of these states as separate fields; 0.3 keeps them in the
# tuple `slots`, apart or stacked (`core.slots.layout_slots`). `restore_structure`
# reads 0.2's layout and either of 0.3's.
_V02_SLOT_FIELDS = {
    FtrlState: ("sum_of_squares", "linear"),
    AdagradDAState: ("gradient_sum", "sum_of_squares"),
    ScaleByAdagradMomentumState: ("accumulator", "momentum"),  # new in 0.3: slots only
}


def _entry(node: Any, path: Sequence[Any], start: int, stop: int | None = None) -> Any:
    """The entry of `node` at ``path[start:stop]``; a ValueError naming `path` if there is none."""
    for depth in range(start, len(path) if stop is None else stop):
        try:
            node = _child(node, path[depth])
        except (KeyError, IndexError, AttributeError, TypeError):
            raise ValueError(
                f"adagrad_jax.restore_structure: the restored tree has no entry at"
                f" {jax.tree_util.keystr(tuple(path[: depth + 1]))} (target leaf"
                f" {jax.tree_util.keystr(tuple(path))}): it was saved from other parameters or"
                " another optimizer."
            ) from None
    return node


def _slot_leaves(node: Any, path: Sequence[Any], depth: int, fields: tuple) -> list:
    """Each slot's restored array for the leaf at ``path[depth + 2:]`` of a two-slot state.

    `node` is the restored state: 0.2's (a mapping of `fields`), or 0.3's in
    either layout (``slots`` holding one stacked tree or one tree per slot).
    """
    rest = path[depth + 2 :]
    if isinstance(node, Mapping) and "slots" not in node:  # 0.2: one field per slot
        return [
            _entry(node, (*path[:depth], jax.tree_util.GetAttrKey(f), *rest), depth) for f in fields
        ]
    trees = _entry(node, path, depth, depth + 1)
    if len(trees) == 1:  # stacked
        leaf = _entry(trees, (*path[: depth + 1], jax.tree_util.SequenceKey(0), *rest), depth + 1)
        return [jnp.asarray(leaf)[..., i] for i in range(len(fields))]
    return [
        _entry(trees, (*path[: depth + 1], jax.tree_util.SequenceKey(i), *rest), depth + 1)
        for i in range(len(fields))
    ]


def _same_layout(node: Any, want: Any) -> bool:
    """Whether the restored state `node` keeps its slots as the target state `want` does
    (then its arrays are used as they are)."""
    slots = node.get("slots") if isinstance(node, Mapping) else getattr(node, "slots", None)
    return isinstance(slots, (list, tuple)) and len(slots) == len(want.slots)


def _restored_leaf(target: Any, restored: Any, path: Sequence[Any]) -> Any:
    """The restored array for the target leaf at `path`.

    A two-slot state (`_V02_SLOT_FIELDS`) is read from 0.2's layout or from
    0.3's other ``stack_slots`` layout when it differs from the target's.
    """
    node, want = restored, target
    for depth, key in enumerate(path):
        fields = _V02_SLOT_FIELDS.get(type(want), ())
        if fields and key == jax.tree_util.GetAttrKey("slots") and not _same_layout(node, want):
            # path[depth + 1] picks a tree of the tuple `slots`: the one stacked
            # tree (1-tuple), or slot i of the separate layout.
            leaves = _slot_leaves(node, path, depth, fields)
            if len(want.slots) == 1:
                return jnp.stack([jnp.asarray(x) for x in leaves], axis=-1)
            return leaves[path[depth + 1].idx]
        node = _entry(node, path, depth, depth + 1)
        want = _child(want, key)
    return node


def restore_structure(target: Any, restored: Any) -> Any:
    """Gives a tree restored without a target the structure of ``target``.

    Orbax restores a checkpoint saved without a target as plain dicts and
    lists: every NamedTuple (``ScaleByAdagradState``, optax's chain,
    ``MaskedState``, ...) becomes a dict of its fields and every tuple a list,
    and ``tx.update`` then fails with ``AttributeError: 'dict' object has no
    attribute ...``. This puts each restored array back at its place in
    ``target``, by path (field names, list positions and dict keys, whatever
    their order), so the result can go straight back into ``tx.update``.
    The restored arrays are used as they are (no copy, no cast).

    It also migrates states saved by adagrad_jax 0.2: there `FtrlState` held
    n and z as two trees (``sum_of_squares``, ``linear``) and `AdagradDAState`
    z and G (``gradient_sum``, ``sum_of_squares``); since 0.3 each keeps them
    in ``slots``, as a tuple of the two trees (``stack_slots=False``, the
    default) or stacked on a last axis of one tree (``stack_slots=True``).
    Where ``target`` has such a state and the restored tree has the 0.2
    fields instead of ``slots`` (or ``slots`` in the other layout), the two
    arrays of each leaf are stacked (a new array), split, or put in place;
    the numbers are not changed. Restore a 0.2 checkpoint without a target,
    then call this; a 0.3 state moves between layouts the same way.

    Args:
      target: a tree of the wanted structure: the state itself, or abstractly
        ``jax.eval_shape(tx.init, params)`` (only structure, shapes and dtypes
        are read).
      restored: the plain tree Orbax returned for it (0.3's layout or 0.2's).

    Returns:
      ``target``'s structure holding ``restored``'s arrays.

    Raises:
      ValueError: if ``restored`` lacks an entry of ``target`` or holds one
        of another shape or dtype (the checkpoint came from other parameters
        or another optimizer); the message names the path.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import adagrad_jax
      >>> tx = adagrad_jax.adagrad(0.1)
      >>> params = {"w": jnp.ones(2)}
      >>> plain = [None, {"sum_of_squares": {"w": jnp.array([4.0, 4.0])}}, None]  # as Orbax
      >>> state = adagrad_jax.restore_structure(jax.eval_shape(tx.init, params), plain)
      >>> state[1].sum_of_squares["w"]
      Array([4., 4.], dtype=float32)
      >>> updates, state = tx.update({"w": jnp.ones(2)}, state, params)

      A 0.2 `ftrl` state (n and z apart) goes into 0.3's stacked slots:

      >>> tx = adagrad_jax.ftrl(0.1, stack_slots=True)
      >>> v02 = {"count": jnp.array(1), "sum_of_squares": {"w": jnp.array([4.0, 4.0])},
      ...        "linear": {"w": jnp.array([-2.0, 1.0])}}
      >>> state = adagrad_jax.restore_structure(jax.eval_shape(tx.init, params), v02)
      >>> state.slots[0]["w"]
      Array([[ 4., -2.],
             [ 4.,  1.]], dtype=float32)
    """
    paths, treedef = jax.tree_util.tree_flatten_with_path(target)
    leaves = []
    for path, want in paths:
        node = _restored_leaf(target, restored, path)
        shape, dtype = getattr(node, "shape", None), getattr(node, "dtype", None)
        if hasattr(want, "shape") and (shape != want.shape or dtype != want.dtype):
            raise ValueError(
                f"adagrad_jax.restore_structure: the restored leaf at"
                f" {jax.tree_util.keystr(path)} has shape {getattr(node, 'shape', None)}"
                f" and dtype {getattr(node, 'dtype', None)}; the target has"
                f" {want.shape} and {want.dtype}."
            )
        leaves.append(node)
    return jax.tree.unflatten(treedef, leaves)
