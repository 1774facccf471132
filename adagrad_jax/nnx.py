"""Flax NNX support: train embedding tables of an NNX model row-sparsely.

`flax.nnx.Optimizer` works with every optimizer of this package on dense
gradients as it is::

    optimizer = nnx.Optimizer(model, adagrad_jax.adagrad(0.1), wrt=nnx.Param)

What it cannot do is train a table from row gradients: `nnx.grad` builds the
dense table-sized gradient, and `nnx.Optimizer.update` calls
`optax.apply_updates`, which refuses `adagrad_jax.RowSparse`. This module adds
the three pieces that make the row-sparse path an ordinary NNX training step:

- `Embed`: `flax.nnx.Embed` (same arguments, parameters and numbers; an
  id at or above the vocabulary size looks up a zero row, not a NaN one)
  whose table `value_and_row_grad` differentiates by rows;
- `value_and_row_grad`: `nnx.value_and_grad` that returns a `RowSparse` for
  each `Embed` table and dense gradients for every other parameter, never
  building a table-sized gradient;
- `Optimizer`: `nnx.Optimizer`, running Flax's own `update`, whose `RowSparse`
  updates are applied as `adagrad_jax.apply_updates` applies them (only the
  touched rows are written).

Needs Flax (``pip install flax``); importing `adagrad_jax` alone does not.
"""

from adagrad_jax._src.flax_nnx import Embed as Embed
from adagrad_jax._src.flax_nnx import Optimizer as Optimizer
from adagrad_jax._src.flax_nnx import value_and_row_grad as value_and_row_grad

__all__ = [
    "Embed",
    "Optimizer",
    "value_and_row_grad",
]
