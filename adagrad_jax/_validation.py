"""Argument checks shared by every constructor in adagrad_jax.

Checks run on Python and NumPy values only. A JAX array (concrete or traced, as
`optax.inject_hyperparams` passes them) is accepted unchecked, so that no traced
value is ever turned into a Python bool.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

_F = TypeVar("_F", bound=Callable[..., Any])


def _python_number(value: Any) -> float | None:
    """Returns `value` as a float if it is a plain (non-JAX) real number."""
    if isinstance(value, jax.Array):
        return None
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # An int beyond float range: reported as not finite.
            return math.inf if value > 0 else -math.inf
    return None


def check_number(
    fn: str,
    arg: str,
    value: Any,
    *,
    positive: bool = False,
    allow_schedule: bool = False,
) -> None:
    """Checks that `value` is a finite number >= 0 (> 0 if `positive`).

    Raises:
        TypeError: if `value` is neither a number, a JAX array nor (when
            `allow_schedule`) a callable.
        ValueError: if `value` is a negative, zero (when `positive`) or non-finite
            Python or NumPy number.
    """
    if allow_schedule and callable(value):
        return
    if isinstance(value, jax.Array):
        return  # Possibly traced (inject_hyperparams): never checked in Python.
    number = _python_number(value)
    if number is None:
        kind = "a number or an optax schedule" if allow_schedule else "a number"
        raise TypeError(f"{fn}({arg}={value!r}): {arg} must be {kind}, got {type(value).__name__}.")
    bound = "> 0" if positive else ">= 0"
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"{fn}({arg}={value!r}): {arg} must be finite and {bound}.")


def is_positive_in(value: Any, dtype: Any) -> bool:
    """True if `value` is a Python/NumPy number that stays > 0 in `dtype`."""
    number = _python_number(value)
    return number is not None and bool(np.asarray(number, dtype) > 0)


def is_zero_constant(value: Any) -> bool:
    """True if `value` is a Python/NumPy number equal to 0."""
    number = _python_number(value)
    return number is not None and number == 0


def check_float_dtype(fn: str, arg: str, dtype: Any) -> jnp.dtype | None:
    """Returns `dtype` as a real floating `jnp.dtype`, or None if it is None."""
    if dtype is None:
        return None
    try:
        parsed = jnp.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{fn}({arg}={dtype!r}): {arg} is not a dtype.") from e
    if not jnp.issubdtype(parsed, jnp.floating):
        raise ValueError(
            f"{fn}({arg}={dtype!r}): {arg} must be a real floating dtype such as jnp.float32."
        )
    return parsed


def check_param_dtype(fn: str, path: Any, dtype: Any) -> None:
    """Raises TypeError for parameter leaves that are not float or complex."""
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"{fn}: parameter {jax.tree_util.keystr(path) or '<root>'} has dtype"
            f" {jnp.dtype(dtype).name}; Adagrad needs floating or complex"
            " parameters. Exclude integer leaves with optax.masked or cast them."
        )


def check_same_structure(fn: str, name_a: str, tree_a: Any, name_b: str, tree_b: Any) -> None:
    """Raises ValueError naming the first path where two trees differ.

    `tree_b` is the reference (the state); the message names the first of its
    leaves that `tree_a` lacks, else the first leaf of `tree_a` it lacks, else
    the first position whose node types differ.
    """
    treedef_a = jax.tree.structure(tree_a)
    treedef_b = jax.tree.structure(tree_b)
    if treedef_a == treedef_b:
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
        f"{fn}: the tree of {name_a} differs from {name_b}: {detail}. Pass"
        f" {name_a} with the structure the state was initialised with."
    )


_ALIASES = {
    "lr": "learning_rate",
    "learning_rate": "lr",
    "epsilon": "eps",
    "eps": "epsilon",
    "initial_accumulator": "initial_accumulator_value",
    "decay": "weight_decay",
    "wd": "weight_decay",
}


def checked_arguments(fn: _F) -> _F:
    """Turns a bad call of a constructor into an error that suggests a fix.

    Python's own message for an unknown keyword names neither the value nor the
    closest valid name; this wrapper adds both.
    """
    signature = inspect.signature(fn)
    known = list(signature.parameters)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        unknown = [k for k in kwargs if k not in signature.parameters]
        if unknown:
            name = unknown[0]
            close = (
                [_ALIASES[name]]
                if _ALIASES.get(name) in known
                else (difflib.get_close_matches(name, known, n=1, cutoff=0.5))
            )
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"{fn.__name__}({name}={kwargs[name]!r}): unknown argument {name!r}."
                f" Valid arguments: {', '.join(known)}.{hint}"
            )
        try:
            signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{fn.__name__}: {e}.") from None
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
