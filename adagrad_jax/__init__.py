"""adagrad_jax: the Adagrad family of optimizers as optax GradientTransformations."""

from adagrad_jax import compat as compat
from adagrad_jax import schedules as schedules
from adagrad_jax._adagrad import ScaleByAdagradState as ScaleByAdagradState
from adagrad_jax._adagrad import adagrad as adagrad
from adagrad_jax._adagrad import scale_by_adagrad as scale_by_adagrad
from adagrad_jax._packed import PackedAdagrad as PackedAdagrad
from adagrad_jax._packed import PackedAdagradState as PackedAdagradState
from adagrad_jax._packed import packed_adagrad as packed_adagrad
from adagrad_jax._rows import RowSparse as RowSparse
from adagrad_jax._rows import apply_updates as apply_updates
from adagrad_jax._rows import on_row_values as on_row_values
from adagrad_jax._sparse_adagrad import scale_by_sparse_adagrad as scale_by_sparse_adagrad
from adagrad_jax._sparse_adagrad import sparse_adagrad as sparse_adagrad
from adagrad_jax._rows import value_and_row_grad as value_and_row_grad

__version__ = "0.1.0"

__all__ = [
    "PackedAdagrad",
    "PackedAdagradState",
    "RowSparse",
    "ScaleByAdagradState",
    "adagrad",
    "apply_updates",
    "compat",
    "on_row_values",
    "packed_adagrad",
    "scale_by_adagrad",
    "scale_by_sparse_adagrad",
    "schedules",
    "sparse_adagrad",
    "value_and_row_grad",
]
