"""`accumulators` reads any optimizer's sums of squares; `restore_structure` undoes Orbax's dicts."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from tests.specs import SPECS

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.array([0.5, -0.25])}
GRADS = {"w": jnp.arange(1.0, 7.0).reshape(2, 3) / 4, "b": jnp.array([1.0, -2.0])}
WITH_ACCUMULATORS = [s for s in SPECS if s.accumulators is not None]


def _expected(state) -> list:
    """The accumulator leaves, found by their documented field (not by `accumulators`)."""
    states = [
        x
        for x in jax.tree.leaves(
            state, is_leaf=lambda x: hasattr(x, "sum_of_squares") or hasattr(x, "statistics")
        )
        if hasattr(x, "sum_of_squares") or hasattr(x, "statistics")
    ]
    assert len(states) == 1, states
    field = "sum_of_squares" if hasattr(states[0], "sum_of_squares") else "statistics"
    return jax.tree.leaves(getattr(states[0], field))


def _step(tx, params=PARAMS, grads=GRADS):
    state = tx.init(params)
    _, state = tx.update(grads, state, params)
    return state


@pytest.mark.parametrize("spec", WITH_ACCUMULATORS, ids=lambda s: s.name)
def test_accumulators_equal_each_specs_own_reader(spec):
    """Source: each spec's accumulator reader in tests/specs.py (the state's documented field)."""
    state = _step(spec.build())
    got = jax.tree.leaves(adagrad_jax.accumulators(state))
    want = spec.accumulators(state)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize(
    "make",
    [
        lambda: adagrad_jax.adagrad(0.1),
        lambda: adagrad_jax.proximal_adagrad(0.1, l1=0.01),
        lambda: adagrad_jax.adagrad_da(0.1),
        lambda: adagrad_jax.ftrl(0.1),
        lambda: adagrad_jax.full_matrix_adagrad(0.1, block_size=2),
        lambda: adagrad_jax.shampoo(0.1),
        lambda: adagrad_jax.adagrad_norm(0.1),
        lambda: adagrad_jax.compat.torch_adagrad(0.1),
        lambda: adagrad_jax.compat.keras_adagrad(0.1),
    ],
    ids=[
        "adagrad",
        "proximal_adagrad",
        "adagrad_da",
        "ftrl",
        "full_matrix_adagrad",
        "shampoo",
        "adagrad_norm",
        "torch_adagrad",
        "keras_adagrad",
    ],
)
@pytest.mark.parametrize(
    "wrap", ["plain", "inject_hyperparams", "masked", "multi_transform", "MultiSteps", "chain"]
)
def test_accumulators_inside_optax_wrappers(make, wrap):
    tx = make()
    if wrap == "inject_hyperparams":
        tx = optax.inject_hyperparams(lambda lr: optax.chain(make(), optax.scale(lr)))(lr=1.0)
    elif wrap == "masked":
        tx = optax.masked(tx, {"w": True, "b": True})
    elif wrap == "multi_transform":
        tx = optax.multi_transform({"a": tx, "o": optax.sgd(0.1)}, {"w": "a", "b": "o"})
    elif wrap == "MultiSteps":
        tx = optax.MultiSteps(tx, every_k_schedule=1)
    elif wrap == "chain":
        tx = optax.chain(optax.clip_by_global_norm(10.0), tx, optax.scale(1.0))
    plain = _expected(_step(make()))
    # optax.MultiSteps divides by its int32 step count: not strict-clean (optax).
    with jax.numpy_dtype_promotion("standard"):
        got = adagrad_jax.accumulators(_step(tx))
    if wrap == "multi_transform":
        assert got["b"] is None  # trained by optax.sgd
        plain = plain[len(plain) - len(jax.tree.leaves(got)) :]  # leaves order: b, w
    for g, w in zip(jax.tree.leaves(got), plain, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_accumulators_merge_partitions_and_keep_the_params_structure():
    tx = optax.multi_transform(
        {"table": adagrad_jax.adagrad(0.1), "linear": adagrad_jax.ftrl(0.1)},
        {"w": "table", "b": "linear"},
    )
    acc = adagrad_jax.accumulators(_step(tx))
    assert jax.tree.structure(acc) == jax.tree.structure(PARAMS)
    # Hand computation: adagrad's G = 0 + g^2, ftrl's n = 0.1 + g^2.
    np.testing.assert_allclose(acc["w"], GRADS["w"] ** 2)
    np.testing.assert_allclose(acc["b"], 0.1 + GRADS["b"] ** 2)


def test_accumulators_of_tables_row_wise_and_packed():
    params = {"emb": jnp.zeros((5, 2))}
    grads = {"emb": adagrad_jax.RowSparse(jnp.array([1, 3, 1]), jnp.ones((3, 2)))}
    acc = adagrad_jax.accumulators(_step(adagrad_jax.adagrad(0.1), params, grads))
    np.testing.assert_array_equal(acc["emb"][:, 0], [0, 4, 0, 1, 0])  # row 1: (1 + 1)^2
    acc = adagrad_jax.accumulators(_step(adagrad_jax.adagrad(0.1, row_wise=True), params, grads))
    np.testing.assert_array_equal(acc["emb"], [0, 4, 0, 1, 0])
    opt = adagrad_jax.experimental.packed_adagrad(0.1)
    state = opt.step(opt.init(PARAMS), GRADS)
    acc = adagrad_jax.accumulators(state)
    np.testing.assert_array_equal(acc["w"], GRADS["w"] ** 2)
    np.testing.assert_array_equal(acc["b"], GRADS["b"] ** 2)


def test_accumulators_errors():
    with pytest.raises(ValueError, match="holds no state of an adagrad_jax optimizer"):
        adagrad_jax.accumulators(optax.adam(1e-3).init(PARAMS))
    restored = {"inner_states": {"a": {"inner_state": [None, {"sum_of_squares": {"w": 1.0}}]}}}
    with pytest.raises(TypeError, match=r"restored without a target.*restore_structure"):
        adagrad_jax.accumulators(restored)
    twice = optax.chain(adagrad_jax.adagrad(0.1), adagrad_jax.adagrad(0.1))
    with pytest.raises(ValueError, match=r"\['b'\] has accumulators in several states"):
        adagrad_jax.accumulators(twice.init(PARAMS))


def _as_orbax_restores(tree):
    """NamedTuples as dicts of their fields, tuples as lists, empty nodes as None."""
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return (
            None
            if not tree._fields
            else {f: _as_orbax_restores(getattr(tree, f)) for f in tree._fields}
        )
    if isinstance(tree, (tuple, list)):
        return [_as_orbax_restores(x) for x in tree]
    if isinstance(tree, dict):
        return {k: _as_orbax_restores(v) for k, v in tree.items()}
    return tree


def test_restore_structure_rebuilds_nested_optax_state():
    tx = optax.inject_hyperparams(
        lambda lr: optax.multi_transform(
            {"a": adagrad_jax.adagrad(lr), "b": adagrad_jax.adagrad_da(lr)}, {"w": "a", "b": "b"}
        )
    )(lr=0.1)
    state = _step(tx)
    plain = _as_orbax_restores(state)
    with pytest.raises(AttributeError):
        tx.update(GRADS, plain, PARAMS)  # what users meet today
    rebuilt = adagrad_jax.restore_structure(jax.eval_shape(tx.init, PARAMS), plain)
    assert jax.tree.structure(rebuilt) == jax.tree.structure(state)
    want, _ = tx.update(GRADS, state, PARAMS)
    got, _ = tx.update(GRADS, rebuilt, PARAMS)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_restore_structure_names_the_path_of_a_mismatch():
    tx = adagrad_jax.adagrad(0.1)
    plain = _as_orbax_restores(tx.init(PARAMS))
    target = jax.eval_shape(tx.init, {"w": PARAMS["w"], "b": PARAMS["b"], "c": jnp.zeros(1)})
    with pytest.raises(ValueError, match=r"no entry at \[1\]\.sum_of_squares\['c'\]"):
        adagrad_jax.restore_structure(target, plain)
    target = jax.eval_shape(tx.init, {"w": PARAMS["w"], "b": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"\['b'\] has shape \(2,\)"):
        adagrad_jax.restore_structure(target, plain)


@pytest.mark.parametrize("stack_slots", [True, False])
def test_a_v02_checkpoint_migrates_into_the_new_slots_and_trains_on(stack_slots):
    """tests/data/v02_checkpoint was written by 0.2 (n, z and z, G as separate fields).

    Restored without a target and migrated by `restore_structure`, into either
    layout, it must train on exactly as a run that never stopped: 3 steps by
    0.2, saved, 3 more by this version == 6 steps by this version, bit for bit.
    """
    ocp = pytest.importorskip("orbax.checkpoint")
    from tests.data import make_v02_checkpoint as v02

    path = os.path.join(os.path.dirname(__file__), "data", "v02_checkpoint")
    restored = ocp.StandardCheckpointer().restore(os.path.abspath(path))
    fields = {
        "ftrl": ("sum_of_squares", "linear"),
        "adagrad_da": ("gradient_sum", "sum_of_squares"),
    }
    for name, tx in v02.optimizers(stack_slots=stack_slots).items():
        saved = restored[name]["opt_state"]
        assert "slots" not in saved and set(fields[name]) <= set(saved)  # 0.2's layout
        state = adagrad_jax.restore_structure(jax.eval_shape(tx.init, v02.params()), saved)
        assert len(state.slots) == (1 if stack_slots else 2)
        for field in fields[name]:  # the views read 0.2's arrays back
            jax.tree.map(np.testing.assert_array_equal, getattr(state, field), saved[field])
        jax.tree.map(
            np.testing.assert_array_equal,
            adagrad_jax.accumulators(state),
            saved["sum_of_squares"],
        )
        resumed = v02.train(tx, restored[name]["params"], state, range(v02.STEPS, 2 * v02.STEPS))
        straight = v02.train(tx, v02.params(), tx.init(v02.params()), range(2 * v02.STEPS))
        assert jax.tree.structure(resumed) == jax.tree.structure(straight)
        jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_restore_structure_names_a_missing_v02_field():
    tx = adagrad_jax.ftrl(0.1)
    v02 = {"count": jnp.array(1), "sum_of_squares": {"w": jnp.ones(2)}}  # no "linear"
    with pytest.raises(ValueError, match=r"no entry at \.linear \(target leaf \.linear\['w'\]\)"):
        adagrad_jax.restore_structure(jax.eval_shape(tx.init, {"w": jnp.ones(2)}), v02)


@pytest.mark.parametrize("make", [adagrad_jax.ftrl, adagrad_jax.adagrad_da])
@pytest.mark.parametrize("plain", [False, True], ids=["state", "as_orbax_restores"])
def test_restore_structure_moves_a_state_between_the_slot_layouts(make, plain):
    """stack_slots=True <-> False: the same numbers, and training goes on identically."""
    params = {"t": jnp.linspace(-1.0, 1.0, 6).reshape(3, 2), "b": jnp.array([0.5, -0.25])}
    grads = {"t": jnp.arange(1.0, 7.0).reshape(3, 2) / 4, "b": jnp.array([1.0, -2.0])}
    for source, target in ((True, False), (False, True)):
        tx_from, tx_to = make(0.1, stack_slots=source), make(0.1, stack_slots=target)
        _, state = tx_from.update(grads, tx_from.init(params), params)
        given = _as_orbax_restores(state) if plain else state
        moved = adagrad_jax.restore_structure(jax.eval_shape(tx_to.init, params), given)
        assert len(moved.slots) == (1 if target else 2)
        jax.tree.map(
            np.testing.assert_array_equal,
            adagrad_jax.accumulators(moved),
            adagrad_jax.accumulators(state),
        )
        want, _ = tx_from.update(grads, state, params)
        got, _ = tx_to.update(grads, moved, params)
        jax.tree.map(np.testing.assert_array_equal, got, want)


def test_a_state_of_the_other_slot_layout_is_refused_naming_the_fix():
    params = {"t": jnp.zeros((3, 2))}
    stacked_state = adagrad_jax.ftrl(0.1, stack_slots=True).init(params)
    with pytest.raises(ValueError, match=r"ftrl\(stack_slots=False\): state.slots holds 1 trees"):
        adagrad_jax.ftrl(0.1).update({"t": jnp.ones((3, 2))}, stacked_state, params)
    apart = adagrad_jax.adagrad_da(0.1).init(params)
    with pytest.raises(ValueError, match=r"restore_structure"):
        adagrad_jax.adagrad_da(0.1, stack_slots=True).update({"t": jnp.ones((3, 2))}, apart, params)
