"""Argument checks shared by every constructor in adagrad_jax.

One helper for each kind of argument, one behaviour everywhere:

- `check_number`, `check_nonnegative`: a real scalar hyperparameter (finite, >= 0 or > 0);
- `check_integer`: an integer scalar argument (a row id, a block size);
- `check_float_dtype`: an accumulator dtype;
- `check_choice`: a string flag from a fixed set (``out_of_range``, ``nonfinite``, ``graft``);
- `check_bool`: a True/False flag (a NumPy bool too; never 1, "yes" or None);
- `check_real_params`: parameters of the regularized family (no complex leaves);
- `checked_arguments`: an unknown keyword named, with the closest valid one;
- `is_positive_in`, `is_zero_constant`, `python_number`: what a Python constant
  lets the code leave out (a zero guard, a multiply).

Checks of gradient and parameter trees (structure, shapes, float or complex
dtypes) live in `trees`; checks of run-time values in `runtime`.

Python and NumPy numbers and concrete JAX arrays are checked by value. A traced
JAX array (as `optax.inject_hyperparams` passes them under `jit`) is checked
by shape and dtype only, which are known at trace time: no traced value is
ever turned into a Python bool.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, TypeVar, cast

import jax
import jax.numpy as jnp
import numpy as np

_F = TypeVar("_F", bound=Callable[..., Any])
_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)


def is_traced(value: Any) -> bool:
    """True if `value` is a JAX tracer: its value is unknown until run time."""
    return isinstance(value, jax.core.Tracer)


def describe(value: Any) -> str:
    """`value` as error messages show it: ``Array(-0.1)`` for a concrete JAX array."""
    if isinstance(value, jax.Array) and not is_traced(value):
        return f"Array({value!s})"
    return repr(value)


def python_number(value: Any) -> float | None:
    """Returns `value` as a float if it is a plain (non-JAX) real number."""
    if isinstance(value, jax.Array):
        return None
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        try:
            return float(value)
        except OverflowError:  # An int beyond float range: reported as not finite.
            return math.inf if cast(Any, value) > 0 else -math.inf  # (only ints overflow)
    return None


def _real_scalar(caller: str, arg: str, value: Any, kind: str) -> float | None:
    """The value of a real scalar argument as a float; None for a tracer.

    Raises TypeError for anything but a Python int or float, or a NumPy or JAX
    scalar of an integer or floating dtype of at most 64 bits; ValueError for
    an array that is not a scalar (shapes are known even for tracers).
    """
    shown = describe(value)
    if isinstance(value, _ARRAY_TYPES):
        dtype = jnp.dtype(value.dtype)
        real = jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
        if not real or dtype.itemsize > 8:
            hint = f"; pass float({arg})" if real else ""
            raise TypeError(
                f"{caller}({arg}={shown}): {arg} must be a real scalar (an integer or"
                f" floating dtype of at most 64 bits), got dtype {dtype.name}{hint}."
            )
        if np.shape(value) != ():
            raise ValueError(
                f"{caller}({arg}={shown}): {arg} must be a scalar, got shape {np.shape(value)}."
            )
        if is_traced(value):
            return None
        value = np.asarray(value).item()
    elif isinstance(value, numbers.Number) and not isinstance(value, (bool, int, float, complex)):
        # fractions.Fraction, decimal.Decimal, ...: JAX cannot take them.
        raise TypeError(
            f"{caller}({arg}={shown}): {arg} must be {kind}: a Python int or float or a"
            f" NumPy or JAX scalar, got {type(value).__name__}; pass float({arg})."
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{caller}({arg}={shown}): {arg} must be {kind}, got {type(value).__name__}."
        )
    try:
        return float(value)
    except OverflowError:  # An int beyond float range: reported as not finite.
        return math.inf if value > 0 else -math.inf


def check_number(
    caller: str,
    arg: str,
    value: Any,
    *,
    positive: bool = False,
    allow_schedule: bool = False,
) -> None:
    """Checks that `value` is a finite real scalar >= 0 (> 0 if `positive`).

    Accepted: Python ints and floats (not bools), NumPy scalars and 0-d arrays,
    and JAX scalars, of an integer or floating dtype of at most 64 bits; with
    `allow_schedule`, also any other callable (an optax schedule). Concrete
    values are checked like Python numbers; a traced JAX scalar (under
    `optax.inject_hyperparams` and `jit`) is checked for its shape and dtype
    only.

    "Finite" means finite in JAX's default float dtype when the optimizer is
    built: float32, or float64 when `jax_enable_x64` is on. A value such as
    1e308 is finite in float64 but inf once JAX computes with it in float32,
    so it is refused unless 64-bit mode is on. Positive values too small for
    that dtype are accepted (they round to 0, and the zero guard of the update
    handles them).

    Raises:
        TypeError: for a bool, a string, None, a complex or boolean array, a
            number type JAX cannot take (`fractions.Fraction`, `decimal.Decimal`,
            `np.longdouble`: the message says to pass ``float(value)``), a
            callable where no schedule is allowed, or a schedule that cannot be
            called with one argument (the step count).
        ValueError: for an array of any shape but (), or a value that is
            negative, zero (when `positive`), NaN or not finite in JAX's
            default float dtype.
    """
    if allow_schedule and callable(value) and not isinstance(value, _ARRAY_TYPES):
        try:
            inspect.signature(value).bind(0)
        except TypeError:
            raise TypeError(
                f"{caller}({arg}={describe(value)}): {arg} is a callable that cannot take the step"
                f" count; an optax schedule is called as {arg}(count). Pass a number, or a"
                " function of one argument (optax.constant_schedule(x) for a constant)."
            ) from None
        except ValueError:
            pass  # No signature to read (a builtin): trust it.
        return
    kind = "a number or an optax schedule" if allow_schedule else "a number"
    number = _real_scalar(caller, arg, value, kind)
    if number is None:
        return  # Traced: shape and dtype checked, the value is unknown.
    bound = "> 0" if positive else ">= 0"
    shown = describe(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"{caller}({arg}={shown}): {arg} must be finite and {bound}.")
    default = jnp.dtype(jnp.result_type(float))
    limit = float(jnp.finfo(default).max)
    with np.errstate(over="ignore"):
        overflows = not np.isfinite(np.asarray(number, default))
    if overflows:
        hint = " or enable 64-bit mode (jax_enable_x64)" if default.itemsize < 8 else ""
        raise ValueError(
            f"{caller}({arg}={shown}): {arg} must be finite and {bound} in {default.name}, JAX's"
            f" default float dtype (at most {limit:.8g}). Pass a smaller value{hint}."
        )


def check_integer(
    caller: str, arg: str, value: Any, *, low: int | None = None, high: int | None = None
) -> int | None:
    """Checks an integer scalar argument (such as a row id) and returns its value.

    Accepted: Python ints (not bools), NumPy integer scalars and 0-d arrays, and
    JAX integer scalars. A concrete value is returned as a Python int and,
    when `low` / `high` are given, must lie in [low, high]; a traced JAX scalar
    is checked for its shape and dtype only and gives None.

    Raises:
        TypeError: for a float (even an integral one such as 2.0, or a JAX
            array of a floating dtype), a bool, a string or None.
        ValueError: for an array of any shape but (), or a value outside
            [low, high].
    """
    shown = describe(value)
    if isinstance(value, _ARRAY_TYPES):
        dtype = jnp.dtype(value.dtype)
        if not jnp.issubdtype(dtype, jnp.integer):
            raise TypeError(
                f"{caller}({arg}={shown}): {arg} must be an integer, got dtype {dtype.name}."
            )
        if np.shape(value) != ():
            raise ValueError(
                f"{caller}({arg}={shown}): {arg} must be a scalar, got shape {np.shape(value)}."
            )
        if is_traced(value):
            return None
        value = int(np.asarray(value).item())
    elif isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{caller}({arg}={shown}): {arg} must be an integer, got {type(value).__name__}."
        )
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{caller}({arg}={shown}): {arg} must be in [{lo}, {hi}].")
    return int(value)


def is_positive_in(value: Any, dtype: Any) -> bool:
    """True if `value` is a Python/NumPy number that stays a normal positive number in `dtype`.

    XLA flushes subnormal numbers to zero, so a value below the smallest normal
    number of `dtype` (1e-40 in float32, 1e-320 in float64) counts as 0, like
    one that rounds to 0. Traced and JAX values count as not positive.
    """
    number = python_number(value)
    if number is None or not number > 0:
        return False
    with np.errstate(over="ignore", under="ignore"):
        rounded = float(np.asarray(number, dtype))
    return rounded >= float(jnp.finfo(dtype).tiny)


def is_zero_constant(value: Any) -> bool:
    """True if `value` is a Python/NumPy number equal to 0."""
    number = python_number(value)
    return number is not None and number == 0


def check_float_dtype(caller: str, arg: str, dtype: Any) -> jnp.dtype | None:
    """Returns `dtype` as a real floating `jnp.dtype`, or None if it is None.

    Raises:
        TypeError: if `dtype` is not a dtype.
        ValueError: for a dtype that is not real floating, or one narrower than
            16 bits (the float8 and float4 types cannot hold a sum of squares,
            and XLA has no arithmetic for several of them).
    """
    if dtype is None:
        return None
    try:
        parsed = jnp.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{caller}({arg}={dtype!r}): {arg} is not a dtype.") from e
    if not jnp.issubdtype(parsed, jnp.floating):
        raise ValueError(
            f"{caller}({arg}={dtype!r}): {arg} must be a real floating dtype such as jnp.float32."
        )
    if jnp.finfo(parsed).bits < 16:
        raise ValueError(
            f"{caller}({arg}={dtype!r}): {arg} must be at least 16 bits wide (bfloat16,"
            f" float16, float32 or float64); {parsed.name} cannot hold a sum of squares."
        )
    return parsed


def check_accumulator_dtype(caller: str, dtype: Any, *, int8_refused: str | None) -> Any:
    """``accumulator_dtype``: None, a real floating dtype of >= 16 bits, or ``"int8"``.

    ``"int8"`` (or the int8 dtype) asks for 8-bit accumulators (`core/quantized.py`)
    and comes back as the string ``"int8"``; `int8_refused` says why this
    optimizer (or this configuration) has none, or is None where it has them.

    Raises:
        ValueError: for ``"int8"`` where `int8_refused` is set, naming why; for
            any other dtype or dtype name that is not real floating (or is
            narrower than 16 bits), as `check_float_dtype`.
        TypeError: for a value that is not a dtype.
    """
    arg = "accumulator_dtype"
    is_int8 = isinstance(dtype, str) and dtype == "int8"
    if not isinstance(dtype, str) and dtype is not None:
        try:
            is_int8 = jnp.dtype(dtype) == jnp.dtype(jnp.int8)
        except TypeError:
            is_int8 = False
    if is_int8:
        if int8_refused is not None:
            raise ValueError(f"{caller}({arg}={dtype!r}): 8-bit accumulators {int8_refused}.")
        return "int8"
    try:
        return check_float_dtype(caller, arg, dtype)
    except ValueError as e:
        if int8_refused is None:
            raise ValueError(
                f"{e} Or pass accumulator_dtype='int8' for 8-bit accumulators."
            ) from None
        raise


def int8_refused_when_stacked(stack_slots: bool, slots: str) -> str | None:
    """Why an optimizer with two slots has no 8-bit accumulator in this configuration:
    ``stack_slots=True`` holds both slots (`slots`, e.g. "n and z") in one array of
    one dtype. None with the slots apart (the sum of squares is then 8-bit, the
    signed slot float32)."""
    if not stack_slots:
        return None
    return (
        f"need the slots apart: stack_slots=True holds {slots} in one array of one dtype."
        " Pass stack_slots=False (the sum of squares is then kept in 8 bits, the other"
        " slot in float32)"
    )


def check_choice(caller: str, arg: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raises ValueError unless `value` is one of `choices` (strings or None), naming them all.

    >>> check_choice("f", "mode", "dorp", ("drop", "error"))
    Traceback (most recent call last):
    ...
    ValueError: f(mode='dorp'): mode must be one of 'drop', 'error'. Did you mean 'drop'?
    """
    if not isinstance(value, (str, type(None))) or value not in choices:
        close = (
            difflib.get_close_matches(value, [c for c in choices if c], n=1)
            if isinstance(value, str)
            else []
        )
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"{caller}({arg}={value!r}): {arg} must be one of"
            f" {', '.join(repr(c) for c in choices)}.{hint}"
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


def checked_arguments(constructor: _F) -> _F:
    """Turns a bad call of a constructor into an error that suggests a fix.

    Python's own message for an unknown keyword names neither the value nor the
    closest valid name; this wrapper adds both.
    """
    signature = inspect.signature(constructor)
    known = list(signature.parameters)

    @functools.wraps(constructor)
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
                f"{constructor.__name__}({name}={kwargs[name]!r}): unknown argument {name!r}."
                f" Valid arguments: {', '.join(known)}.{hint}"
            )
        try:
            signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{constructor.__name__}: {e}.") from None
        return constructor(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_real_params(constructor: str, params: Any, *, subject: str | None = None) -> None:
    """TypeError for complex parameter leaves, naming the leaf's path; `subject` is what is
    defined for real parameters only (default: the L1 and L2 terms)."""
    subject = subject or f"the L1 and L2 terms of {constructor} are"
    for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = jnp.dtype(p.dtype if hasattr(p, "dtype") else jnp.result_type(p))
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(
                f"{constructor}: parameter {jax.tree_util.keystr(path) or '<root>'} is"
                f" {dtype.name}; {subject} defined"
                " for real parameters only. Train complex leaves with"
                " adagrad_jax.adagrad (split the tree with optax.multi_transform)."
            )


def concrete_number(value: Any) -> float | None:
    """A concrete real scalar (Python, NumPy or JAX, at most 64 bits) as a float; else None."""
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        dtype = jnp.dtype(value.dtype)
        real = jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
        ok = real and dtype.itemsize <= 8 and np.shape(value) == () and not is_traced(value)
        return float(np.asarray(value).item()) if ok else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # A big int: inf.
        return float(value) if abs(value) < 1e308 else math.copysign(math.inf, value)
    return None


def check_in_range(caller: str, arg: str, value: Any, ok: Any, bound: str) -> None:
    """ValueError unless a concrete `value` satisfies `ok` (`bound` says how); JAX values
    that are traced pass."""
    number = concrete_number(value)
    if number is not None and not ok(number):
        raise ValueError(f"{caller}({arg}={describe(value)}): {arg} must be {bound}.")


def check_signed_number(caller: str, arg: str, value: Any) -> None:
    """A finite real scalar of either sign (`checks.check_number`'s types and shapes)."""
    number = concrete_number(value)
    if number is None:
        check_number(caller, arg, value)  # Refuses types and shapes; tracers pass.
        return
    default = jnp.dtype(jnp.result_type(float))
    with np.errstate(over="ignore"):
        in_range = math.isfinite(number) and np.isfinite(np.asarray(number, default))
    if not in_range:
        raise ValueError(
            f"{caller}({arg}={describe(value)}): {arg} must be a finite number (of"
            f" either sign) in {default.name}, JAX's default float dtype."
        )


def check_bool(constructor: str, arg: str, value: Any) -> bool:
    """Returns a flag as a Python bool; TypeError for anything but True, False or a NumPy bool.

    A NumPy bool (``np.bool_``, what ``np.array(True)[()]`` or a comparison
    of NumPy scalars gives) is a flag; an int (1), a string ("yes"), None or
    a JAX array is not: a flag decides which program is traced, so it must be
    known in Python.

    >>> check_bool("f", "flag", np.True_)
    True
    >>> check_bool("f", "flag", 1)
    Traceback (most recent call last):
    ...
    TypeError: f(flag=1): flag must be True or False.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{constructor}({arg}={value!r}): {arg} must be True or False.")
    return bool(value)


def check_nonnegative(constructor: str, **values: Any) -> None:
    """check_number for each keyword: finite and >= 0 (JAX values unchecked)."""
    for arg, value in values.items():
        check_number(constructor, arg, value)
