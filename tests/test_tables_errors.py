"""Clear errors around tables (issue 16): RowSparse's guard, global norms, ids trees.

Each test names what a user does wrong and checks that the error names
RowSparse (or the argument) and the fix; where a number is checked, its source
is in the test.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from adagrad_jax import RowSparse


def _grads():
    return {"t": RowSparse(jnp.array([1, 2]), jnp.ones((2, 3)))}


# --- RowSparse as a pytree ------------------------------------------------------------


def test_row_sparse_key_paths_are_its_attribute_names():
    g = RowSparse(jnp.array([2, 0]), jnp.arange(4.0).reshape(2, 2))
    flat, treedef = jax.tree_util.tree_flatten_with_path(g)
    names = [path[0].name for path, _ in flat]
    assert names == ["_guard", "indices", "values"]  # the guard first: maps fail on it
    for name, (_, leaf) in zip(names, flat):
        assert getattr(g, name) is leaf
    assert jax.dtypes.issubdtype(flat[0][1].dtype, jax.dtypes.prng_key)
    rebuilt = jax.tree.unflatten(treedef, [leaf for _, leaf in flat])
    assert rebuilt.indices is g.indices and rebuilt.values is g.values


# --- global norms ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "tx",
    [optax.clip_by_global_norm(1.0), optax.normalize_by_update_norm()],
    ids=["clip_by_global_norm", "normalize_by_update_norm"],
)
def test_global_norm_transforms_refuse_row_sparse(tx):
    # Before: "NotImplementedError: Cannot call abstract method real" only. Under
    # jit (how a step runs) the error now shows the guard's dtype, which names
    # RowSparse and adagrad_jax.on_row_values.
    with pytest.raises(TypeError) as info:
        jax.jit(tx.update)(_grads(), tx.init(None))
    message = str(info.value)
    assert "adagrad_jax.RowSparse guard: this transform does not support RowSparse" in message
    assert "wrap it in adagrad_jax.on_row_values" in message
    # Eagerly optax reads `leaf.real`, a property JAX leaves abstract on a concrete
    # key array: JAX's own error, still raised before anything is computed.
    with pytest.raises(NotImplementedError, match="Cannot call abstract method real"):
        tx.update(_grads(), tx.init(None))


def test_clip_on_row_values_after_adagrad_is_the_dense_clip():
    """The fix the error names, placed after the Adagrad stage, clips like dense.

    Hand computation: at the first step with tau = eps_root = 0, eps = 1e-8,
    scale_by_adagrad gives g / (|g| + eps) per coordinate, i.e. +-1 (to 1e-8)
    on the 4 nonzero coordinates of rows 1 and 3 of the summed gradient, so the
    update's norm is 2 and clipping to 0.5 scales every entry to +-0.25. Dense
    and row-sparse chains agree entry by entry (the id -1 is padding).
    """
    num_rows = 5
    grads = RowSparse(
        jnp.array([1, 3, 1, -1]),
        jnp.array([[1.0, -2.0], [0.5, 0.5], [1.0, 1.0], [9.0, 9.0]]),
    )
    params = jnp.zeros((num_rows, 2))
    sparse = optax.chain(
        adagrad_jax.scale_by_adagrad(),
        adagrad_jax.on_row_values(optax.clip_by_global_norm(0.5)),
    )
    dense = optax.chain(adagrad_jax.scale_by_adagrad(), optax.clip_by_global_norm(0.5))
    u_sparse, _ = sparse.update(grads, sparse.init(params), params)
    u_dense, _ = dense.update(grads.todense(num_rows), dense.init(params), params)
    got = u_sparse.todense(num_rows)
    np.testing.assert_allclose(got, u_dense, rtol=1e-6, atol=1e-7)
    # Summed rows: row 1 = [2, -1], row 3 = [0.5, 0.5]; signs carry over.
    expected = np.zeros((num_rows, 2), np.float32)
    expected[1] = [0.25, -0.25]
    expected[3] = [0.25, 0.25]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_clip_on_gradient_rows_counts_each_lookup():
    """Before the Adagrad stage the norm is over lookups, as on_row_values documents.

    Hand computation: row 1 looked up twice with a = [3, 0] and b = [-3, 0]: the
    dense gradient's row is a + b = 0 (norm 0, no clip), but the lookups' norm
    is sqrt(9 + 9) = sqrt(18) > 1, so each value is scaled by 1 / sqrt(18).
    """
    grads = RowSparse(jnp.array([1, 1]), jnp.array([[3.0, 0.0], [-3.0, 0.0]]))
    tx = adagrad_jax.on_row_values(optax.clip_by_global_norm(1.0))
    u, _ = tx.update(grads, tx.init(None))
    np.testing.assert_allclose(u.values, np.array(grads.values) / np.sqrt(18.0), rtol=1e-6)
    np.testing.assert_array_equal(u.todense(3), np.zeros((3, 2)))  # still sums to 0
    assert "|a|^2 + |b|^2" in adagrad_jax.on_row_values.__doc__


# --- value_and_row_grad: ids that do not mirror params --------------------------------


def _loss(rows, y):
    return jnp.sum((rows["emb"] @ rows["w"] - y) ** 2)


PARAMS = {"emb": jnp.arange(8.0).reshape(4, 2), "w": jnp.ones(2)}


def test_value_and_row_grad_with_one_ids_array_shows_the_tree_form():
    # Before: "ids is an id array, but params is {'emb': Array([[0., 1.], ...".
    with pytest.raises(ValueError) as info:
        adagrad_jax.value_and_row_grad(_loss)(PARAMS, jnp.array([1, 3, 1]), jnp.zeros(3))
    message = str(info.value)
    assert message.startswith("value_and_row_grad: ids is one id array (int32[3])")
    assert "params is a tree, {'emb': float32[4,2], 'w': float32[2]}" in message
    assert "Pass {'emb': ids, 'w': None} in place of ids." in message
    assert "Array(" not in message and "6., 7." not in message  # no array contents


def test_value_and_row_grad_with_ids_array_at_a_subtree_names_its_path():
    params = {"tables": {"a": jnp.zeros((5, 2)), "b": jnp.zeros((3, 2))}, "w": jnp.ones(2)}
    fn = adagrad_jax.value_and_row_grad(lambda rows: jnp.sum(rows["w"]))
    with pytest.raises(ValueError) as info:
        fn(params, {"tables": jnp.array([0, 1]), "w": None})
    message = str(info.value)
    assert "ids['tables'] is one id array (int32[2])" in message
    assert "params['tables'] is a tree, {'a': float32[5,2], 'b': float32[3,2]}" in message
    # The example marks the largest array, the likely table.
    assert "Pass {'a': ids, 'b': None} in place of ids['tables']." in message


def test_value_and_row_grad_with_a_mismatched_ids_tree_describes_both():
    # Before: JAX's multi-line "pytree structure error" inside the message.
    with pytest.raises(ValueError) as info:
        adagrad_jax.value_and_row_grad(_loss)(PARAMS, {"emb": jnp.array([1, 3])}, jnp.zeros(3))
    message = str(info.value)
    assert re.search(r"ids must mirror params, .* e\.g\. \{'emb': ids, 'w': None\}", message)
    assert "got ids {'emb': int32[2]} for params {'emb': float32[4,2], 'w': float32[2]}" in (
        message
    )
    assert "\n" not in message and "Array(" not in message


def test_value_and_row_grad_message_stays_short_for_a_large_model():
    params = {f"layer{i:03d}": jnp.zeros((2, 2)) for i in range(200)}
    fn = adagrad_jax.value_and_row_grad(lambda rows: 0.0)
    with pytest.raises(ValueError, match="is one id array") as info:
        fn(params, jnp.array([0]))
    # Each described tree is cut at 300 characters (plus " ...").
    assert len(str(info.value)) < 1200


# --- applying RowSparse updates with other libraries' apply ---------------------------


def test_optax_apply_updates_names_both_fixes():
    with pytest.raises(TypeError) as info:
        optax.apply_updates({"t": jnp.zeros((4, 3))}, _grads())
    message = str(info.value)
    assert "adagrad_jax.apply_updates (not optax.apply_updates)" in message
    assert "adagrad_jax.nnx.Optimizer (not flax.nnx.Optimizer)" in message


def test_flax_nnx_optimizer_names_adagrad_jax_nnx_optimizer():
    nnx = pytest.importorskip("flax.nnx")
    import adagrad_jax.nnx  # needs Flax: imported once the skip above has passed

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.emb = adagrad_jax.nnx.Embed(6, 2, rngs=rngs)

        def __call__(self, ids):
            return self.emb(ids)

    model = Model(nnx.Rngs(0))
    _, grads = adagrad_jax.nnx.value_and_row_grad(lambda m, ids: jnp.sum(m(ids)))(
        model, jnp.array([1, 4])
    )
    optimizer = nnx.Optimizer(model, adagrad_jax.adagrad(0.1), wrt=nnx.Param)
    with pytest.raises(TypeError) as info:
        optimizer.update(model, grads)
    message = str(info.value)
    assert "adagrad_jax.nnx.Optimizer" in message and "adagrad_jax.apply_updates" in message
