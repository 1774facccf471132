"""Learning-rate schedules that belong with Adagrad.

Both are optax schedules: functions of the step count (0 at the first step)
that return a scalar of JAX's default float dtype (float32, or float64 when
64-bit mode is on), usable wherever optax takes a learning rate.
"""

from adagrad_jax._src.schedules import inverse_sqrt_decay as inverse_sqrt_decay
from adagrad_jax._src.schedules import inverse_time_decay as inverse_time_decay

__all__ = [
    "inverse_sqrt_decay",
    "inverse_time_decay",
]
