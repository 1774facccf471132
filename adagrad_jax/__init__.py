"""adagrad_jax: the Adagrad family of optimizers as optax GradientTransformations."""

from adagrad_jax import compat as compat
from adagrad_jax import schedules as schedules
from adagrad_jax._adagrad import ScaleByAdagradState as ScaleByAdagradState
from adagrad_jax._adagrad import adagrad as adagrad
from adagrad_jax._adagrad import scale_by_adagrad as scale_by_adagrad

__version__ = "0.1.0"

__all__ = [
    "ScaleByAdagradState",
    "adagrad",
    "compat",
    "scale_by_adagrad",
    "schedules",
]
