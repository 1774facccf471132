"""`error_if`: a check of values known only at run time that raises under plain `jax.jit` too."""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adagrad_jax._src.core.checks import is_traced


class RuntimeCheckError(ValueError):
    """Raised by a failed `error_if` check (eagerly as itself; under `jax.jit` its
    message arrives inside the `jax.errors.JaxRuntimeError` that JAX raises)."""


class _QuietCheckErrors(logging.Filter):
    """Drops JAX's "callback failed" log record (with a full traceback) for our checks.

    The error itself still propagates with its message; the log record would
    only repeat it, with a traceback into JAX's internals.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, RuntimeCheckError)


@functools.cache
def _quiet_check_errors() -> None:
    for name in ("jax._src.debugging", "jax._src.callback"):
        logging.getLogger(name).addFilter(_QuietCheckErrors())


def _raise_if(message: str, bad: Any, *values: Any) -> None:
    """Host side of `error_if`: raises for the first True entry of `bad` (vmap batches it)."""
    flags = np.asarray(bad).reshape(-1)
    if not flags.any():
        return
    first = int(np.argmax(flags))
    shown = [np.asarray(v).reshape(-1)[first] if np.ndim(v) else np.asarray(v) for v in values]
    raise RuntimeCheckError(message.format(*(x.item() for x in shown)))


def error_if(bad: Any, message: str, *values: Any) -> None:
    """Raises `RuntimeCheckError(message.format(*values))` where the scalar `bad` is True.

    A check of values known only at run time that works eagerly, under plain
    `jax.jit` (no `checkify` needed) and under `vmap`. Concrete inputs are
    checked at once in Python. Traced ones are checked on the device: when
    `bad` is True a host callback (run only then, under a `lax.cond`) raises,
    and JAX raises a `jax.errors.JaxRuntimeError` carrying the message from
    the jitted call (or from the first `block_until_ready` where dispatch is
    asynchronous). When `bad` is False the step costs one scalar branch.

    On a step sharded over several devices (or processes) the callback runs
    on every device (``partitioned=True``), each with its own copy of the
    scalars, so every device raises at the same point of the program and
    none is left waiting in a collective for one that stopped (with the
    callback on one device only, XLA aborts the whole process instead).

    Args:
      bad: a boolean scalar (a JAX array, traced or not), the same on every
        device (a reduction is).
      message: a `str.format` template with one ``{}`` per value.
      *values: scalars shown in the message (the offending id, its position),
        also the same on every device.
    """
    if not any(is_traced(x) for x in (bad, *values)):
        _raise_if(message, bad, *values)
        return
    _quiet_check_errors()
    callback = functools.partial(_raise_if, message)
    jax.lax.cond(
        jnp.asarray(bad),
        # partitioned: every device runs the callback; see the docstring.
        lambda: jax.debug.callback(callback, bad, *values, partitioned=True),
        lambda: None,
    )
