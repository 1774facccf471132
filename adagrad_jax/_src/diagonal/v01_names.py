"""`sparse_adagrad`, `scale_by_sparse_adagrad`: v0.1 names of `adagrad`, `scale_by_adagrad`.

The same optimizers with the same arguments (since 0.2 `adagrad` takes
`RowSparse` gradients itself); their errors keep naming the v0.1 names.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from adagrad_jax._src.core import checks
from adagrad_jax._src.diagonal.adagrad import (
    AdagradHyperparameters,
    build_adagrad,
    build_scale_by_adagrad,
)


@checks.checked_arguments
def scale_by_sparse_adagrad(
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    eps_root: jax.typing.ArrayLike = 0.0,
    accumulator_dtype: Any = None,
    row_wise: bool = False,
    pad_id: int | None = None,
    out_of_range: str = "drop",
    unique_rows: int | None = None,
    nonfinite: str = "propagate",
) -> optax.GradientTransformation:
    """`adagrad_jax.scale_by_adagrad` under its v0.1 name (the rule, for tables too, is there).

    Example:
      >>> import jax.numpy as jnp
      >>> import adagrad_jax
      >>> tx = adagrad_jax.scale_by_sparse_adagrad(eps=0.0)
      >>> tx.update(jnp.array([3.0]), tx.init(jnp.zeros(1)))[0]      # 3 / sqrt(9)
      Array([1.], dtype=float32)
    """
    return build_scale_by_adagrad(
        "scale_by_sparse_adagrad",
        AdagradHyperparameters(
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            eps_root=eps_root,
            accumulator_dtype=accumulator_dtype,
            row_wise=row_wise,
            pad_id=pad_id,
            out_of_range=out_of_range,
            unique_rows=unique_rows,
            nonfinite=nonfinite,
        ),
    )


@checks.checked_arguments
def sparse_adagrad(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    initial_accumulator_value: jax.typing.ArrayLike = 0.0,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    eps_root: jax.typing.ArrayLike = 0.0,
    weight_decay: jax.typing.ArrayLike | None = None,
    accumulator_dtype: Any = None,
    row_wise: bool = False,
    pad_id: int | None = None,
    out_of_range: str = "drop",
    unique_rows: int | None = None,
    nonfinite: str = "propagate",
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformation:
    """`adagrad_jax.adagrad` under its v0.1 name (the rule, for tables too, is there).

    Example:
      >>> import jax.numpy as jnp
      >>> import adagrad_jax
      >>> tx = adagrad_jax.sparse_adagrad(learning_rate=0.1)
      >>> tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))[0]      # -lr * sign(g)
      Array([-0.1], dtype=float32)
    """
    return build_adagrad(
        "sparse_adagrad",
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        hyperparameters=AdagradHyperparameters(
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            eps_root=eps_root,
            accumulator_dtype=accumulator_dtype,
            row_wise=row_wise,
            pad_id=pad_id,
            out_of_range=out_of_range,
            unique_rows=unique_rows,
            nonfinite=nonfinite,
        ),
        stochastic_rounding=stochastic_rounding,
        seed=seed,
    )
