"""The learning-rate schedules of Adagrad's lineage (`adagrad_jax.schedules`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adagrad_jax._src.core import checks


def _as_default_float(*values):
    dtype = jnp.result_type(float)
    return tuple(jnp.asarray(v).astype(dtype) for v in values)


@checks.checked_arguments
def inverse_sqrt_decay(init_value: jax.typing.ArrayLike) -> optax.Schedule:
    """The 1/t decay of the seed material: lr_t = init_value / sqrt(t + 1).

    With this schedule, plain gradient descent over the root mean square of
    past gradients, ``lr_t / sqrt(mean(g_0^2..g_t^2))``, is exactly Adagrad's
    ``init_value / sqrt(sum(g_0^2..g_t^2))``: the two (t + 1) factors cancel.

    Args:
      init_value: the learning rate at t = 0 (>= 0).

    Returns:
      An optax schedule, count -> init_value / sqrt(count + 1).

    Raises:
      ValueError, TypeError: for an `init_value` that is not a finite real
        scalar >= 0 (a concrete JAX array is checked like a Python number).

    Example:
      >>> from adagrad_jax.schedules import inverse_sqrt_decay
      >>> schedule = inverse_sqrt_decay(1.0)
      >>> [round(float(schedule(t)), 4) for t in (0, 1, 3)]
      [1.0, 0.7071, 0.5]
    """
    checks.check_number("inverse_sqrt_decay", "init_value", init_value)

    def schedule(count):
        t, lr = _as_default_float(count, init_value)
        return lr / jnp.sqrt(t + 1)

    return schedule


@checks.checked_arguments
def inverse_time_decay(
    init_value: jax.typing.ArrayLike, decay_rate: jax.typing.ArrayLike
) -> optax.Schedule:
    """PyTorch's `lr_decay`: lr_t = init_value / (1 + decay_rate * t).

    `torch.optim.Adagrad` computes ``lr / (1 + (step - 1) * lr_decay)`` with
    its step starting at 1, which is this schedule of the optax count
    (starting at 0). Legacy Keras' `decay` argument is the same formula.

    Args:
      init_value: the learning rate at t = 0 (>= 0).
      decay_rate: d >= 0; 0 gives a constant schedule.

    Returns:
      An optax schedule, count -> init_value / (1 + decay_rate * count).

    Raises:
      ValueError, TypeError: for an `init_value` or `decay_rate` that is not a
        finite real scalar >= 0 (a concrete JAX array is checked like a Python
        number: ``decay_rate=jnp.array(-0.5)`` is refused).

    Example:
      >>> from adagrad_jax.schedules import inverse_time_decay
      >>> schedule = inverse_time_decay(0.1, decay_rate=0.5)
      >>> [round(float(schedule(t)), 4) for t in (0, 1, 2)]
      [0.1, 0.0667, 0.05]
    """
    checks.check_number("inverse_time_decay", "init_value", init_value)
    checks.check_number("inverse_time_decay", "decay_rate", decay_rate)

    def schedule(count):
        t, lr, rate = _as_default_float(count, init_value, decay_rate)
        return lr / (1 + rate * t)

    return schedule
