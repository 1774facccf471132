"""adagrad_jax: the Adagrad family of optimizers as optax GradientTransformations."""

from adagrad_jax import compat as compat
from adagrad_jax import experimental as experimental
from adagrad_jax import schedules as schedules
from adagrad_jax._src.beyond_diagonal.adagrad_norm import (
    ScaleByAdagradNormState as ScaleByAdagradNormState,
)
from adagrad_jax._src.beyond_diagonal.adagrad_norm import adagrad_norm as adagrad_norm
from adagrad_jax._src.beyond_diagonal.adagrad_norm import (
    scale_by_adagrad_norm as scale_by_adagrad_norm,
)
from adagrad_jax._src.beyond_diagonal.full_matrix import (
    ScaleByFullMatrixAdagradState as ScaleByFullMatrixAdagradState,
)
from adagrad_jax._src.beyond_diagonal.full_matrix import full_matrix_adagrad as full_matrix_adagrad
from adagrad_jax._src.beyond_diagonal.full_matrix import (
    scale_by_full_matrix_adagrad as scale_by_full_matrix_adagrad,
)
from adagrad_jax._src.beyond_diagonal.shampoo import ScaleByShampooState as ScaleByShampooState
from adagrad_jax._src.beyond_diagonal.shampoo import scale_by_shampoo as scale_by_shampoo
from adagrad_jax._src.beyond_diagonal.shampoo import shampoo as shampoo
from adagrad_jax._src.core.nonfinite_policy import NonfiniteState as NonfiniteState
from adagrad_jax._src.core.quantized import Int8Accumulator as Int8Accumulator
from adagrad_jax._src.diagonal.adagrad import ScaleByAdagradState as ScaleByAdagradState
from adagrad_jax._src.diagonal.adagrad import adagrad as adagrad
from adagrad_jax._src.diagonal.adagrad import scale_by_adagrad as scale_by_adagrad
from adagrad_jax._src.diagonal.adagrad_momentum import (
    ScaleByAdagradMomentumState as ScaleByAdagradMomentumState,
)
from adagrad_jax._src.diagonal.adagrad_momentum import adagrad_momentum as adagrad_momentum
from adagrad_jax._src.diagonal.adagrad_momentum import (
    scale_by_adagrad_momentum as scale_by_adagrad_momentum,
)

# packed_adagrad lives in adagrad_jax.experimental (not a GradientTransformation, and it
# loses whole training steps of matmul models); the 0.1 names still import, outside __all__.
from adagrad_jax._src.diagonal.packed import PackedAdagrad as PackedAdagrad
from adagrad_jax._src.diagonal.packed import PackedAdagradState as PackedAdagradState
from adagrad_jax._src.diagonal.packed import packed_adagrad as packed_adagrad
from adagrad_jax._src.diagonal.sm3 import ScaleBySM3State as ScaleBySM3State
from adagrad_jax._src.diagonal.sm3 import scale_by_sm3 as scale_by_sm3
from adagrad_jax._src.diagonal.sm3 import sm3 as sm3
from adagrad_jax._src.diagonal.v01_names import scale_by_sparse_adagrad as scale_by_sparse_adagrad
from adagrad_jax._src.diagonal.v01_names import sparse_adagrad as sparse_adagrad
from adagrad_jax._src.regularized.adagrad_da import AdagradDAState as AdagradDAState
from adagrad_jax._src.regularized.adagrad_da import adagrad_da as adagrad_da
from adagrad_jax._src.regularized.ftrl import FtrlState as FtrlState
from adagrad_jax._src.regularized.ftrl import ftrl as ftrl
from adagrad_jax._src.regularized.proximal_adagrad import (
    ProximalAdagradState as ProximalAdagradState,
)
from adagrad_jax._src.regularized.proximal_adagrad import proximal_adagrad as proximal_adagrad
from adagrad_jax._src.state_access import accumulators as accumulators
from adagrad_jax._src.state_access import restore_structure as restore_structure
from adagrad_jax._src.tables.apply import apply_updates as apply_updates
from adagrad_jax._src.tables.apply import on_row_values as on_row_values
from adagrad_jax._src.tables.grad import value_and_row_grad as value_and_row_grad
from adagrad_jax._src.tables.placement import propose_placement as propose_placement
from adagrad_jax._src.tables.placement import state_shardings as state_shardings
from adagrad_jax._src.tables.row_sparse import RowSparse as RowSparse
from adagrad_jax._src.tables.stochastic_rounding import (
    StochasticRoundingState as StochasticRoundingState,
)

__version__ = "0.2.0"  # the one place; pyproject.toml reads it

__all__ = [
    "AdagradDAState",
    "FtrlState",
    "Int8Accumulator",
    "NonfiniteState",
    "ProximalAdagradState",
    "RowSparse",
    "ScaleByAdagradMomentumState",
    "ScaleByAdagradNormState",
    "ScaleByAdagradState",
    "ScaleByFullMatrixAdagradState",
    "ScaleBySM3State",
    "ScaleByShampooState",
    "StochasticRoundingState",
    "accumulators",
    "adagrad",
    "adagrad_da",
    "adagrad_momentum",
    "adagrad_norm",
    "apply_updates",
    "compat",
    "experimental",
    "ftrl",
    "full_matrix_adagrad",
    "on_row_values",
    "propose_placement",
    "proximal_adagrad",
    "restore_structure",
    "scale_by_adagrad",
    "scale_by_adagrad_momentum",
    "scale_by_adagrad_norm",
    "scale_by_full_matrix_adagrad",
    "scale_by_shampoo",
    "scale_by_sm3",
    "scale_by_sparse_adagrad",
    "schedules",
    "shampoo",
    "sm3",
    "sparse_adagrad",
    "state_shardings",
    "value_and_row_grad",
]
