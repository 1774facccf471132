"""Adagrad with the argument names, defaults and numbers of other libraries.

Each constructor returns an `optax.GradientTransformation` that reproduces the
named library's parameter trajectory step for step (up to float rounding),
for real parameters. It is a chain of this package's pieces, so its state
holds a `ScaleByAdagradState` like `adagrad_jax.adagrad`.

| constructor     | eps placement | tau | eps   | weight decay              |
|-----------------|---------------|-----|-------|---------------------------|
| torch_adagrad   | outside root  | 0   | 1e-10 | coupled (added to g)      |
| keras_adagrad   | inside root   | 0.1 | 1e-7  | decoupled (w -= lr*wd*w)  |
| tf1_adagrad     | none          | 0.1 | -     | -                         |

FBGEMM's table optimizers (TorchRec's), on dense leaves and `RowSparse` tables:
`fbgemm_rowwise_adagrad` (``EXACT_ROWWISE_ADAGRAD``: one accumulator per row,
weight-decay modes "none" / "l2" / "decoupled", a row max-norm) and
`fbgemm_exact_adagrad` (``EXACT_ADAGRAD``), eps outside the root, tau 0, eps
1e-8; their state is an `FbgemmAdagradState`.

The regularized family has presets too: `tf1_proximal_adagrad`,
`tf1_adagrad_da` (TF1's ProximalAdagradOptimizer and AdagradDAOptimizer) and
`keras_ftrl` (keras.optimizers.Ftrl, tf.keras's and TF's FTRL kernels).
"""

from adagrad_jax._src.compat.fbgemm import fbgemm_exact_adagrad as fbgemm_exact_adagrad
from adagrad_jax._src.compat.fbgemm import fbgemm_rowwise_adagrad as fbgemm_rowwise_adagrad
from adagrad_jax._src.compat.peers import keras_adagrad as keras_adagrad
from adagrad_jax._src.compat.peers import tf1_adagrad as tf1_adagrad
from adagrad_jax._src.compat.peers import torch_adagrad as torch_adagrad
from adagrad_jax._src.compat.regularized import keras_ftrl as keras_ftrl
from adagrad_jax._src.compat.regularized import tf1_adagrad_da as tf1_adagrad_da
from adagrad_jax._src.compat.regularized import tf1_proximal_adagrad as tf1_proximal_adagrad

__all__ = [
    "fbgemm_exact_adagrad",
    "fbgemm_rowwise_adagrad",
    "keras_adagrad",
    "keras_ftrl",
    "tf1_adagrad",
    "tf1_adagrad_da",
    "tf1_proximal_adagrad",
    "torch_adagrad",
]
