"""Paths that are not (yet) drop-in optax transformations.

`packed_adagrad` keeps the parameters and accumulators of a model in a few
flat buffers that its state owns. It is not an `optax.GradientTransformation`:
it cannot go into `optax.chain` or `nnx.Optimizer`, and a model reads its
weights through views of the buffers. It wins optimizer-bound steps whose
parameters are consumed elementwise (the optimizer step alone, many small
leaves); in whole training steps of matmul models it loses to
`adagrad_jax.adagrad` (docs/guide/performance.md).
"""

from adagrad_jax._src.diagonal.packed import PackedAdagrad as PackedAdagrad
from adagrad_jax._src.diagonal.packed import PackedAdagradState as PackedAdagradState
from adagrad_jax._src.diagonal.packed import packed_adagrad as packed_adagrad

__all__ = ["PackedAdagrad", "PackedAdagradState", "packed_adagrad"]
