"""Coupled weight decay (g + wd * w) for dense leaves; refused on table rows."""

from __future__ import annotations

from typing import Any

import jax
import optax

from adagrad_jax._src.core import checks, trees
from adagrad_jax._src.tables.row_sparse import is_row_sparse, path_name


def coupled_weight_decay(
    weight_decay: Any, caller: str = "adagrad"
) -> optax.GradientTransformation:
    """`optax.add_decayed_weights`, or `optax.identity` for None or a constant 0.

    Both have an empty state, so the chain's state has the same structure
    either way; skipping the constant 0 saves a multiply-add per element.
    Before it adds ``weight_decay * params``, the decay checks the updates
    against `params` with `trees.check_gradients`: an integer gradient
    would be promoted and a (1,) gradient broadcast against a (3,) parameter.
    An update without `params` raises a ValueError naming `caller` and the decay.
    """
    if weight_decay is None or checks.is_zero_constant(weight_decay):
        return optax.identity()
    decay = optax.add_decayed_weights(weight_decay)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                f"{caller}(weight_decay={checks.describe(weight_decay)}): update(updates, state,"
                " params) needs params: the weight decay adds weight_decay * params to the"
                " updates. Pass the current parameters: tx.update(grads, state, params)."
            )
        trees.check_gradients(caller, "updates", updates, "params", params)
        return decay.update(updates, state, params)

    return optax.GradientTransformation(decay.init, update_fn)


def sparse_coupled_weight_decay(caller: str, weight_decay: Any) -> optax.GradientTransformation:
    """`optax.add_decayed_weights` for dense leaves; refuses RowSparse leaves.

    None and a Python 0 give `optax.identity()` (both have an empty state). A
    JAX value (traced under inject_hyperparams) cannot be proven 0, so with it
    a RowSparse leaf is refused too.
    """
    if weight_decay is None or checks.is_zero_constant(weight_decay):
        return optax.identity()
    inner = coupled_weight_decay(weight_decay, caller)  # Checks dense leaves against params.

    def update_fn(updates, state, params=None):
        for path, leaf in jax.tree_util.tree_flatten_with_path(updates, is_leaf=is_row_sparse)[0]:
            if is_row_sparse(leaf):
                raise ValueError(
                    f"{caller}(weight_decay={weight_decay!r}): {path_name(path)} is a"
                    " RowSparse gradient, but coupled weight decay adds"
                    " weight_decay * w to every row of the table, which a"
                    " row-sparse step cannot do (torch.optim.Adagrad refuses it"
                    " too). Leave weight_decay=None for tables (split the tree"
                    " with optax.multi_transform), or add an L2 term on the"
                    " looked-up rows to the loss."
                )
        return inner.update(updates, state, params)

    return optax.GradientTransformation(inner.init, update_fn)
