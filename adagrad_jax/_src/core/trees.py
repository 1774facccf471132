"""Checks of gradient and parameter trees (structure, shapes, dtypes), naming the bad path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def leaf_dtype(x: Any) -> jnp.dtype:
    """The dtype of an array, tracer, `jax.ShapeDtypeStruct` or Python scalar leaf."""
    dtype = getattr(x, "dtype", None)
    return jnp.dtype(dtype) if dtype is not None else jnp.asarray(x).dtype


def _where(name: str, path: Any) -> str:
    return f"{name}{jax.tree_util.keystr(path)}"


def check_inexact(caller: str, where: str, dtype: Any) -> None:
    """Raises TypeError unless `dtype` is floating or complex; `where` names the leaf.

    The one dtype check of parameter and gradient leaves. Integer and boolean
    leaves are refused rather than cast: Adagrad's update is a fraction of the
    gradient, which an integer leaf would truncate (to 0, mostly).

    >>> check_inexact("f", "updates['w']", jnp.bfloat16)
    >>> try:
    ...     check_inexact("f", "updates['w']", jnp.int32)
    ... except TypeError as e:
    ...     print(str(e)[:62])
    f: updates['w'] has dtype int32; Adagrad needs floating or com
    """
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"{caller}: {where} has dtype {dtype.name}; Adagrad needs floating or complex"
            " leaves (an integer step would be truncated). Cast the leaf to a floating"
            " dtype, or exclude it with optax.masked."
        )


def check_param_dtype(caller: str, path: Any, dtype: Any) -> None:
    """`check_inexact` for the parameter at `path`: "parameter ['w'] has dtype int32"."""
    check_inexact(caller, f"parameter {jax.tree_util.keystr(path) or '<root>'}", dtype)


def check_inexact_leaves(
    caller: str,
    name: str,
    tree: Any,
    *,
    is_leaf: Callable[[Any], bool] | None = None,
    dtype_of: Callable[[Any], Any] = leaf_dtype,
) -> None:
    """`check_inexact` for every leaf of `tree`, named ``name['a']['b']``.

    `dtype_of(leaf)` gives a leaf's dtype (pass one for leaves such as
    `RowSparse`, together with `is_leaf`).
    """
    for path, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]:
        check_inexact(caller, _where(name, path), dtype_of(x))


def check_same_structure(caller: str, name_a: str, tree_a: Any, name_b: str, tree_b: Any) -> None:
    """Raises ValueError naming the first path where two trees differ.

    `tree_b` is the reference (the state); the message names the first of its
    leaves that `tree_a` lacks, else the first leaf of `tree_a` it lacks, else
    the first position whose node types differ.
    """
    treedef_a = jax.tree.structure(tree_a)
    treedef_b = jax.tree.structure(tree_b)
    if treedef_a == treedef_b:  # type: ignore[operator]
        return
    keystr = jax.tree_util.keystr
    paths_a = [keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree_a)[0]]
    paths_b = [keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree_b)[0]]
    missing = [p for p in paths_b if p not in set(paths_a)]
    extra = [p for p in paths_a if p not in set(paths_b)]
    if missing:
        detail = f"{name_b} has a leaf at {missing[0]} that {name_a} lacks"
    elif extra:
        detail = f"{name_a} has a leaf at {extra[0]} that {name_b} lacks"
    else:
        detail = f"same leaf paths, different node types: {treedef_a} vs {treedef_b}"
    raise ValueError(
        f"{caller}: the tree of {name_a} differs from {name_b}: {detail}. Pass"
        f" {name_a} with the structure the state was initialised with."
    )


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(np.shape(x))


def check_same_shapes(
    caller: str,
    name_a: str,
    tree_a: Any,
    name_b: str,
    tree_b: Any,
    *,
    is_leaf: Callable[[Any], bool] | None = None,
    shape_a: Callable[[Any], tuple[int, ...]] = _shape,
    shape_b: Callable[[Any], tuple[int, ...]] = _shape,
) -> None:
    """Raises ValueError naming the first leaf whose shape differs between two trees.

    `tree_b` is the reference (the state or the parameters). Shapes must be
    equal, not merely broadcastable: a (1,) gradient for a (3,) parameter, or
    a (3,) gradient for a scalar, is an error. Shapes are static, so this runs
    at trace time and costs nothing in a compiled step.

    The trees are first compared with `check_same_structure` when `is_leaf` is
    None; with `is_leaf`, `tree_b` must have a leaf (or subtree) wherever
    `tree_a` has one. `shape_a(leaf)` and `shape_b(leaf)` give the shapes to
    compare (default: the leaf's own shape), so a caller can compare, say, the
    row shape of a `RowSparse` gradient with a table's.
    """
    if is_leaf is None:
        check_same_structure(caller, name_a, tree_a, name_b, tree_b)
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree_a, is_leaf=is_leaf)
    leaves_b = treedef.flatten_up_to(tree_b)  # type: ignore[attr-defined]
    for (path, a), b in zip(paths_and_leaves, leaves_b):
        sa, sb = tuple(shape_a(a)), tuple(shape_b(b))
        if sa != sb:
            raise ValueError(
                f"{caller}: {_where(name_a, path)} has shape {sa} but {_where(name_b, path)} has"
                f" shape {sb}. Pass {name_a} with the shapes of {name_b} (no broadcasting)."
            )


def check_gradients(caller: str, name: str, tree: Any, ref_name: str, ref_tree: Any) -> None:
    """Checks a gradient tree against the state's or the parameters' tree.

    In order: the same tree structure (`check_same_structure`), the same leaf
    shapes (`check_same_shapes`), and float or complex leaves
    (`check_inexact_leaves`). Each error names `caller`, the first offending path
    and what was found there.
    """
    check_same_shapes(caller, name, tree, ref_name, ref_tree)
    check_inexact_leaves(caller, name, tree)
