"""adagrad_jax.nnx: Flax's own Optimizer code runs, Embed needs no registry, ids out of range.

Sources: ARCHITECTURE.md rule 4 (a table's row gradient is its dense gradient
restricted to the looked-up ids, and a zero gradient row leaves plain Adagrad's
row where it is, so row training equals dense training); the installed Flax's
``flax/nnx/training/optimizer.py`` (the checks and messages of
``nnx.Optimizer``); `adagrad_jax.value_and_row_grad`'s docstring (an id >= the
row count looks up a zero row and comes back unchanged in the gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flax")

from flax import nnx

import adagrad_jax
import adagrad_jax.nnx

VOCAB, DIM = 12, 3
IDS = jnp.array([[1, 4, 4], [7, 1, 0]])  # row 4 twice in one bag, row 1 in two bags
Y = jnp.array([1.0, -1.0])


class BagModel(nnx.Module):
    def __init__(self, embed_cls, rngs):
        self.embed = embed_cls(VOCAB, DIM, rngs=rngs)
        self.out = nnx.Linear(DIM, 1, rngs=rngs)

    def __call__(self, ids):
        return self.out(self.embed(ids).mean(axis=1))[:, 0]


def loss_fn(model, ids, y):
    return jnp.mean((model(ids) - y) ** 2)


def row_model():
    return BagModel(adagrad_jax.nnx.Embed, nnx.Rngs(0))


# --- 1. adagrad_jax.nnx.Optimizer runs Flax's own update -------------------------------------


def test_update_is_flaxs_own_code():
    """No copied body: the class inherits `flax.nnx.Optimizer.update` as it is."""
    assert adagrad_jax.nnx.Optimizer.update is nnx.Optimizer.update


def test_flaxs_check_of_a_missing_grads_argument_still_fires():
    """Flax 0.11+ refuses ``update(grads)`` (the pre-0.11 call) with its own message."""
    model = row_model()
    optimizer = adagrad_jax.nnx.Optimizer(model, adagrad_jax.adagrad(0.1), wrt=nnx.Param)
    _, grads = adagrad_jax.nnx.value_and_row_grad(loss_fn)(model, IDS, Y)
    with pytest.raises(TypeError, match="Missing required argument `grads`"):
        optimizer.update(grads)


def test_a_missing_wrt_argument_is_refused_as_by_flax():
    """wrt is required, as in Flax >= 0.11 (whose message would suggest nnx.ModelAndOptimizer,
    which cannot apply row updates, so the plain keyword-only error is kept here)."""
    with pytest.raises(TypeError, match="required keyword-only argument: 'wrt'"):
        adagrad_jax.nnx.Optimizer(row_model(), adagrad_jax.adagrad(0.1))


def test_the_wrt_filter_still_selects_what_is_trained():
    """Flax filters params and grads by ``wrt``: with wrt=the table only, the Linear stays put."""
    model = row_model()
    only_tables = nnx.All(nnx.Param, nnx.PathContains("embed"))
    optimizer = adagrad_jax.nnx.Optimizer(model, adagrad_jax.adagrad(0.5), wrt=only_tables)
    kernel, table = model.out.kernel[...], model.embed.embedding[...]
    _, grads = adagrad_jax.nnx.value_and_row_grad(loss_fn)(model, IDS, Y)
    optimizer.update(model, grads)
    assert jnp.array_equal(model.out.kernel[...], kernel)
    assert not jnp.array_equal(model.embed.embedding[...], table)


def test_row_training_equals_dense_training_under_jit():
    """Five Adagrad steps: row gradients + adagrad_jax.nnx.Optimizer == nnx.grad + nnx.Optimizer.

    Source: ARCHITECTURE.md rule 4. Rows never looked up keep their values exactly.
    """
    tx = adagrad_jax.adagrad(learning_rate=0.5)
    sparse_model = row_model()
    sparse_opt = adagrad_jax.nnx.Optimizer(sparse_model, tx, wrt=nnx.Param)
    dense_model = BagModel(nnx.Embed, nnx.Rngs(0))
    dense_opt = nnx.Optimizer(dense_model, tx, wrt=nnx.Param)
    untouched = sparse_model.embed.embedding[8:]

    @nnx.jit
    def sparse_step(model, optimizer, ids, y):
        loss, grads = adagrad_jax.nnx.value_and_row_grad(loss_fn)(model, ids, y)
        return loss, optimizer.update(model, grads)

    @nnx.jit
    def dense_step(model, optimizer, ids, y):
        loss, grads = nnx.value_and_grad(loss_fn)(model, ids, y)
        optimizer.update(model, grads)
        return loss

    for step in range(5):
        ids = (IDS + step) % 8  # rows 0..7 only
        sparse_loss, updates = sparse_step(sparse_model, sparse_opt, ids, Y)
        dense_loss = dense_step(dense_model, dense_opt, ids, Y)
        np.testing.assert_allclose(sparse_loss, dense_loss, rtol=1e-6)
    assert isinstance(updates["embed"]["embedding"], adagrad_jax.RowSparse)  # through jit
    assert int(sparse_opt.step[...]) == 5
    np.testing.assert_allclose(
        sparse_model.embed.embedding[...], dense_model.embed.embedding[...], rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(sparse_model.out.kernel[...], dense_model.out.kernel[...], rtol=1e-6)
    assert jnp.array_equal(sparse_model.embed.embedding[8:], untouched)


def test_dense_gradients_give_exactly_what_flaxs_optimizer_gives():
    """With ``nnx.grad`` gradients the two optimizers run the same code on the same arrays."""
    tx = adagrad_jax.adagrad(learning_rate=0.5)
    ours, flaxs = row_model(), row_model()
    our_opt = adagrad_jax.nnx.Optimizer(ours, tx, wrt=nnx.Param)
    flax_opt = nnx.Optimizer(flaxs, tx, wrt=nnx.Param)
    for _ in range(2):
        our_opt.update(ours, nnx.grad(loss_fn)(ours, IDS, Y))
        flax_opt.update(flaxs, nnx.grad(loss_fn)(flaxs, IDS, Y))
    for a, b in zip(jax.tree.leaves(nnx.state(ours)), jax.tree.leaves(nnx.state(flaxs))):
        assert jnp.array_equal(a, b)


def test_flaxs_own_optimizer_given_row_gradients_names_ours():
    """`flax.nnx.Optimizer` cannot add a RowSparse to a table; the error points to the fix.

    The message comes from `RowSparse`'s arithmetic refusal (tables/row_sparse.py),
    reached from ``optax.apply_updates`` inside Flax's update.
    """
    model = row_model()
    optimizer = nnx.Optimizer(model, adagrad_jax.adagrad(0.1), wrt=nnx.Param)
    _, grads = adagrad_jax.nnx.value_and_row_grad(loss_fn)(model, IDS, Y)
    with pytest.raises(TypeError, match=r"adagrad_jax\.nnx\.Optimizer"):
        optimizer.update(model, grads)


# --- 2. Embed reads no registry ---------------------------------------------------------------


def test_the_callers_model_carries_no_recorder():
    """value_and_row_grad records on its own merged copy; the model keeps flax's attributes."""
    model = row_model()
    before = set(vars(model.embed))
    adagrad_jax.nnx.value_and_row_grad(loss_fn)(model, IDS, Y)
    assert set(vars(model.embed)) == before
    assert model.embed._row_lookups is None


def test_a_loss_that_splits_and_merges_the_model_still_gets_row_gradients():
    """The recorder travels with the model copy (it is an attribute, not keyed by id(self)).

    Source: the gradient of the same loss without the split/merge.
    """

    def loss_through_a_copy(model, ids, y):
        graphdef, state = nnx.split(model)
        return loss_fn(nnx.merge(graphdef, state), ids, y)

    model = row_model()
    loss_a, grads_a = adagrad_jax.nnx.value_and_row_grad(loss_through_a_copy)(model, IDS, Y)
    loss_b, grads_b = adagrad_jax.nnx.value_and_row_grad(loss_fn)(model, IDS, Y)
    rows_a = grads_a["embed"]["embedding"].get_value()
    rows_b = grads_b["embed"]["embedding"].get_value()
    assert loss_a == loss_b
    assert jnp.array_equal(rows_a.indices, IDS.reshape(-1))
    assert jnp.array_equal(rows_a.values, rows_b.values)


def test_embed_outside_value_and_row_grad_is_flaxs_embed():
    ours = adagrad_jax.nnx.Embed(VOCAB, DIM, rngs=nnx.Rngs(0))
    flaxs = nnx.Embed(VOCAB, DIM, rngs=nnx.Rngs(0))
    ids = jnp.array([[0, 11, 4], [3, 3, 5]])  # ids in range: the same rows
    assert jnp.array_equal(ours(ids), flaxs(ids))


def test_embed_negative_id_is_padding_like_the_functional_path():
    # Source: the package's id rule (ARCHITECTURE.md, rule 4): a negative id is
    # padding. adagrad_jax.value_and_row_grad looks up a zero row for it, so Embed
    # does too (flax.nnx.Embed would read the last row).
    ours = adagrad_jax.nnx.Embed(VOCAB, DIM, rngs=nnx.Rngs(0))
    out = ours(jnp.array([2, -1, -VOCAB]))
    assert jnp.array_equal(out[1:], jnp.zeros((2, DIM), out.dtype))
    assert jnp.array_equal(out[0], ours.embedding[...][2])
    ids = jnp.array([2, -1, -VOCAB])
    (_, functional_rows), _ = adagrad_jax.value_and_row_grad(
        lambda r: (jnp.sum(r["t"]), r["t"]), has_aux=True
    )({"t": ours.embedding[...]}, {"t": ids})
    assert jnp.array_equal(ours(ids), functional_rows)


# --- 3. an id equal to the vocabulary size ----------------------------------------------------


def functional_step(model, tx, ids, y):
    """The same model as plain arrays through adagrad_jax.value_and_row_grad + apply_updates."""
    params = {
        "embedding": model.embed.embedding[...],
        "kernel": model.out.kernel[...],
        "bias": model.out.bias[...],
    }

    def loss(rows, y):
        pooled = rows["embedding"].mean(axis=1)
        return jnp.mean(((pooled @ rows["kernel"])[:, 0] + rows["bias"][0] - y) ** 2)

    table_ids = {"embedding": ids, "kernel": None, "bias": None}
    value, grads = adagrad_jax.value_and_row_grad(loss)(params, table_ids, y)
    updates, _ = tx.update(grads, tx.init(params), params)
    return value, adagrad_jax.apply_updates(params, updates)


def test_id_equal_to_vocab_looks_up_a_zero_row_and_trains_like_the_functional_path():
    """Default out_of_range="drop": finite loss, no row written for id 12, same numbers.

    Source: `adagrad_jax.value_and_row_grad` (id >= rows: a zero row, its id kept)
    and `adagrad(out_of_range="drop")` (such ids are skipped). Before the fix,
    flax's lookup gave a NaN row, and the loss and every parameter became NaN.
    """
    ids = jnp.array([[1, VOCAB, 4], [VOCAB, 4, 0]])
    tx = adagrad_jax.adagrad(learning_rate=0.5)
    model = row_model()
    expected_loss, expected = functional_step(model, tx, ids, Y)
    optimizer = adagrad_jax.nnx.Optimizer(model, tx, wrt=nnx.Param)
    table = model.embed.embedding[...]

    loss, grads = adagrad_jax.nnx.value_and_row_grad(loss_fn)(model, ids, Y)
    assert jnp.array_equal(grads["embed"]["embedding"].get_value().indices, ids.reshape(-1))
    optimizer.update(model, grads)

    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    np.testing.assert_allclose(model.embed.embedding[...], expected["embedding"], rtol=1e-6)
    np.testing.assert_allclose(model.out.kernel[...], expected["kernel"], rtol=1e-6)
    np.testing.assert_allclose(model.out.bias[...], expected["bias"], rtol=1e-6)
    moved = jnp.flatnonzero((model.embed.embedding[...] != table).any(axis=1))
    assert moved.tolist() == [0, 1, 4]  # the in-range ids; id 12 wrote no row


def test_only_out_of_range_ids_leave_the_table_as_it_was_and_everything_finite():
    """Every id is 12 (== vocab): zero rows looked up, no row of the table moves."""
    ids = jnp.full((2, 3), VOCAB)
    model = row_model()
    optimizer = adagrad_jax.nnx.Optimizer(model, adagrad_jax.adagrad(0.5), wrt=nnx.Param)
    table = model.embed.embedding[...]
    for _ in range(2):
        loss, grads = adagrad_jax.nnx.value_and_row_grad(loss_fn)(model, ids, Y)
        optimizer.update(model, grads)
        assert jnp.isfinite(loss)
    assert jnp.array_equal(model.embed.embedding[...], table)
    assert all(jnp.isfinite(x).all() for x in jax.tree.leaves(nnx.state(model)))


def test_id_equal_to_vocab_is_reported_with_out_of_range_error():
    """`adagrad(out_of_range="error")` names the id and its position, eagerly and under jit."""
    ids = jnp.array([[1, VOCAB, 4], [7, 1, 0]])
    tx = adagrad_jax.adagrad(learning_rate=0.5, out_of_range="error")
    model = row_model()
    optimizer = adagrad_jax.nnx.Optimizer(model, tx, wrt=nnx.Param)
    _, grads = adagrad_jax.nnx.value_and_row_grad(loss_fn)(model, ids, Y)
    with pytest.raises(ValueError, match=f"row id {VOCAB} at position 1"):
        optimizer.update(model, grads)

    @nnx.jit
    def step(model, optimizer, ids, y):
        _, grads = adagrad_jax.nnx.value_and_row_grad(loss_fn)(model, ids, y)
        optimizer.update(model, grads)

    with pytest.raises(jax.errors.JaxRuntimeError, match=f"row id {VOCAB} at position 1"):
        step(model, optimizer, ids, Y)
        jax.block_until_ready(model.embed.embedding[...])


def test_donated_nnx_step_that_returns_its_loss_copies_no_table():
    """Source: the compiled HLO. A loss whose gradient does not read the looked-up rows
    (sum(pooled * upstream)) used to cost two whole-table copies on XLA:CPU, as in
    adagrad_jax.value_and_row_grad; the row gradients are tied to the loss, so the only
    passes over the table are the in-place scatters (accumulator and table)."""
    from devtools import hlo

    vocab, dim = 50_000, 16

    class Model(nnx.Module):
        def __init__(self):
            self.emb = adagrad_jax.nnx.Embed(vocab, dim, rngs=nnx.Rngs(0))

    def loss_fn(model, ids, upstream):
        return jnp.sum(model.emb(ids).sum(axis=1) * upstream)

    model = Model()
    optimizer = adagrad_jax.nnx.Optimizer(model, adagrad_jax.adagrad(0.1), wrt=nnx.Param)

    @nnx.jit(donate_argnums=(0, 1))
    def step(model, optimizer, ids, upstream):
        loss, grads = adagrad_jax.nnx.value_and_row_grad(loss_fn)(model, ids, upstream)
        optimizer.update(model, grads)
        return loss

    ids = jnp.asarray(np.random.default_rng(0).integers(0, vocab, (64, 20)), jnp.int32)
    text = step.lower(model, optimizer, ids, jnp.ones((64, dim))).compile().as_text()
    assert [op for op, _ in hlo.loops_over(text, vocab * dim)] == ["fusion", "fusion"]
