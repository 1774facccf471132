"""Structural facts of the whole training steps the README recommends (no timing).

Each test reads the compiled program, XLA's memory analysis or a trace count:
the steps of `benchmarks/whole_step.py` (their models: `devtools/models.py`)
compile once, update the donated parameters and optimizer state in place, and
the recommendation model's step never builds a table-sized buffer. Also:
`packed_adagrad` lives in `adagrad_jax.experimental`, and the places that need
a GradientTransformation (nnx.Optimizer, optax.chain and other wrappers) raise
a TypeError pointing to `adagrad_jax.adagrad` at their first update.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import adagrad_jax
from adagrad_jax import experimental
from devtools import hlo, models


@pytest.fixture(autouse=True)
def _user_promotion_rules():
    """The benchmark models are user code: they broadcast biases, as users write them."""
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        yield


# Tables large enough that a table-sized temporary would dwarf the step's own.
RECSYS = {"vocabs": (1000, 2000, 5000, 20_000), "dim": 16, "bag": 3, "batch": 32, "tower": (16, 8)}
# The whole-step benchmark's tiny transformer (its smoke-test size).
TRANSFORMER = {"layers": 2, "d": 16, "heads": 2, "mlp": 32, "seq": 8, "batch": 2, "vocab": 50}


def _tx():
    return adagrad_jax.adagrad(0.01, 0.1, eps=0.0, eps_root=1e-7)


def _recsys_step(tx, traces):
    grad_fn = adagrad_jax.value_and_row_grad(models.recsys_row_loss)

    def train_step(params, opt_state, ids, y):
        traces.append(1)
        loss, grads = grad_fn(params, {"tables": ids, "tower": None}, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return adagrad_jax.apply_updates(params, updates), opt_state, loss

    return train_step


def _recsys_inputs():
    params_np, batches_np = models.recsys_problem(RECSYS)
    params = jax.tree.map(jnp.asarray, params_np)
    batches = [
        ({n: jnp.asarray(i) for n, i in ids.items()}, jnp.asarray(y)) for ids, y in batches_np[:3]
    ]
    return params, batches


def test_recsys_row_sparse_step_compiles_once():
    tx, traces = _tx(), []
    params, batches = _recsys_inputs()
    step = jax.jit(_recsys_step(tx, traces), donate_argnums=(0, 1))
    state = tx.init(params)
    for ids, y in batches:  # new ids every step: same shapes, no retrace
        params, state, _ = step(params, state, ids, y)
    assert len(traces) == 1


def test_recsys_row_sparse_step_updates_tables_in_place_without_a_table_sized_buffer():
    """Donation aliases every table and accumulator; temporaries stay O(ids), not O(table)."""
    tx = _tx()
    params, batches = _recsys_inputs()
    step = jax.jit(_recsys_step(tx, []), donate_argnums=(0, 1))
    compiled = step.lower(params, tx.init(params), *batches[0]).compile()
    memory = compiled.memory_analysis()
    if memory is None:
        pytest.skip("no memory analysis on this backend")
    table_bytes = [int(t.nbytes) for t in params["tables"].values()]
    # Each table and its accumulator (float32, the table's shape) are aliased.
    assert memory.alias_size_in_bytes >= 2 * sum(table_bytes), memory
    assert memory.temp_size_in_bytes < max(table_bytes) // 4, memory
    assert hlo.aliased_outputs(compiled.as_text()) >= 2 * len(jax.tree.leaves(params))


def test_recsys_dense_gradient_step_does_build_table_sized_buffers():
    """The contrast that the row-sparse step avoids (optax.adagrad, jax.grad of the lookups)."""
    tx = optax.adagrad(0.01)
    params, batches = _recsys_inputs()

    def train_step(params, opt_state, ids, y):
        loss, grads = jax.value_and_grad(models.recsys_dense_loss)(params, ids, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    compiled = (
        jax.jit(train_step, donate_argnums=(0, 1))
        .lower(params, tx.init(params), *batches[0])
        .compile()
    )
    memory = compiled.memory_analysis()
    if memory is None:
        pytest.skip("no memory analysis on this backend")
    largest = max(int(t.nbytes) for t in params["tables"].values())
    assert memory.temp_size_in_bytes >= largest, memory


@pytest.mark.parametrize("method", ["adagrad_jax", "adagrad_jax_flat"])
def test_transformer_step_compiles_once_and_aliases_every_leaf(method):
    cfg = TRANSFORMER
    params = jax.tree.map(
        jnp.asarray,
        models.transformer_params(cfg["layers"], cfg["d"], cfg["mlp"], cfg["vocab"], cfg["seq"]),
    )
    tx, traces = models.optimizer(method), []

    def train_step(params, opt_state, tokens, targets):
        traces.append(1)
        loss, grads = jax.value_and_grad(models.transformer_loss)(
            params, tokens, targets, heads=cfg["heads"]
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(train_step, donate_argnums=(0, 1))
    state = tx.init(params)
    tokens = jnp.zeros((cfg["batch"], cfg["seq"]), jnp.int32)
    text = step.lower(params, state, tokens, tokens).compile().as_text()
    state_leaves = len(jax.tree.leaves(state))
    assert hlo.aliased_outputs(text) >= len(jax.tree.leaves(params)) + state_leaves - 1
    for _ in range(3):
        params, state, _ = step(params, state, tokens, tokens)
    assert len(traces) == 1


def test_nnx_optimizer_step_compiles_once_and_aliases_its_state():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split((model, nnx.Optimizer(model, _tx(), wrt=nnx.Param)))
    traces = []

    def train_step(state, x):
        traces.append(1)
        model, opt = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
        opt.update(model, grads)
        return nnx.state((model, opt)), loss

    step = jax.jit(train_step, donate_argnums=0)
    x = jnp.ones((2, 8))
    text = step.lower(state, x).compile().as_text()
    # kernel, bias, their two accumulators and the step counters, in place.
    assert hlo.aliased_outputs(text) >= 4
    for _ in range(3):
        state, _ = step(state, x)
    assert len(traces) == 1


# --- packed_adagrad: experimental, and refused where a transformation is needed ---


def test_packed_adagrad_lives_in_experimental_and_the_old_name_still_imports():
    assert experimental.packed_adagrad is adagrad_jax.packed_adagrad
    assert experimental.PackedAdagrad is adagrad_jax.PackedAdagrad
    assert experimental.PackedAdagradState is adagrad_jax.PackedAdagradState
    assert "packed_adagrad" not in adagrad_jax.__all__
    assert "packed_adagrad" in experimental.__all__


# The message every misuse meets: it names packed_adagrad and the fix.
NOT_A_TRANSFORMATION = (
    r"packed_adagrad\(\.\.\.\) has no update\(updates, state, params\).*"
    r"Use adagrad_jax\.adagrad\(\.\.\.\) there"
)


def test_nnx_optimizer_refuses_packed_adagrad_at_its_first_update():
    """nnx.Optimizer reads and calls only `init` when it is built (as user code does,
    so it cannot be told apart without inspecting the caller's frame); its first
    update reads `tx.update`, which raises."""
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, experimental.packed_adagrad(0.1), wrt=nnx.Param)
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 2)))))(model)
    with pytest.raises(TypeError, match=NOT_A_TRANSFORMATION):
        opt.update(model, grads)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda opt: optax.chain(optax.clip(1.0), opt),
        lambda opt: optax.MultiSteps(opt, 2),
        lambda opt: optax.masked(opt, {"w": True}),
        lambda opt: optax.inject_hyperparams(experimental.packed_adagrad)(learning_rate=0.1),
    ],
    ids=["chain", "MultiSteps", "masked", "inject_hyperparams"],
)
def test_optax_wrappers_refuse_packed_adagrad_at_their_first_update(wrap):
    """optax's wrappers keep `init` and `update` through optax.with_extra_args_support,
    which reads only `init` when they are built; their update calls `update`."""
    tx = wrap(experimental.packed_adagrad(0.1))
    params = {"w": jnp.array([1.0, -2.0])}
    state = tx.init(params)
    with pytest.raises(TypeError, match=NOT_A_TRANSFORMATION):
        tx.update({"w": jnp.array([1.0, 1.0])}, state, params)


def test_unpacking_packed_adagrad_as_a_transformation_fails_at_once():
    """A GradientTransformation is an (init, update) pair; unpacking this one raises
    where it is written, with the same message (not 'cannot unpack non-iterable')."""
    with pytest.raises(TypeError, match=NOT_A_TRANSFORMATION):
        _init, _update = experimental.packed_adagrad(0.1)


def test_packed_adagrad_has_no_update_but_works_directly():
    opt = experimental.packed_adagrad(0.1)
    with pytest.raises(TypeError, match=r"packed_adagrad\(\.\.\.\) has no update"):
        opt.update  # noqa: B018 - the attribute read is what fails
    state = opt.init({"w": jnp.array([1.0, -2.0])})  # user code reads init freely
    state = jax.jit(opt.step, donate_argnums=0)(state, {"w": jnp.array([1.0, 1.0])})
    np.testing.assert_allclose(opt.params(state)["w"], [0.9, -2.1], rtol=1e-6)


def _pooled_table_step(tx, vocab, dim, *, id_range):
    """The compiled, donated step of benchmarks/tables.py on 64 bags of 20 ids below
    `id_range`: value_and_row_grad of sum(pooled * upstream), `tx`, apply_updates."""

    def loss(rows, upstream):
        return jnp.sum(rows["table"].sum(axis=1) * upstream)

    grad_fn = adagrad_jax.value_and_row_grad(loss)

    def step(params, state, ids, upstream):
        value, grads = grad_fn(params, {"table": ids}, upstream)
        updates, state = tx.update(grads, state, params)
        return value, adagrad_jax.apply_updates(params, updates), state

    params = {"table": jnp.ones((vocab, dim))}
    ids = jnp.asarray(np.random.default_rng(0).integers(0, id_range, (64, 20)), jnp.int32)
    return (
        jax.jit(step, donate_argnums=(0, 1))
        .lower(params, tx.init(params), ids, jnp.ones((64, dim)))
        .compile()
    )


@pytest.mark.parametrize("row_wise", [False, True])
def test_table_step_that_returns_its_loss_copies_no_table(row_wise):
    """A loss whose gradient does not read the rows (sum(pooled * upstream), as in
    benchmarks/tables.py) used to cost two whole-table copies on XLA:CPU: the
    lookup was not ordered before the in-place writes. value_and_row_grad ties
    the row gradients to the lookup; the only passes over the table left are the
    in-place scatters (the accumulator's, per-coordinate only, and apply's)."""
    vocab, dim = 50_000, 16
    tx = adagrad_jax.adagrad(0.01, 0.1, row_wise=row_wise)
    text = _pooled_table_step(tx, vocab, dim, id_range=vocab).as_text()
    ops = [op for op, _ in hlo.loops_over(text, vocab * dim)]
    assert "copy" not in ops, ops
    assert len(ops) == (1 if row_wise else 2), ops
    assert hlo.aliased_outputs(text) >= 2


_HEADER = re.compile(r"^(?:ENTRY\s+)?%[\w.\-]+\s*\((?P<params>.*)\)\s*->")
_PARAM = re.compile(r"(?P<name>[\w.\-]+):\s*[a-z]+\d*\[(?P<dims>[\d,]*)\]")
_DEFINED = re.compile(r"^\s*(?:ROOT\s+)?%(?P<name>[\w.\-]+)\s*=\s*[a-z]+\d*\[(?P<dims>[\d,]*)\]")
_ROW_OP = re.compile(r"\s(?P<op>gather|scatter)\(%(?P<operand>[\w.\-]+), %(?P<indices>[\w.\-]+)")


def _dims(text):
    return tuple(int(d) for d in text.split(",") if d)


def _row_traffic(text, num_rows):
    """(op, operand shape, index count) of each gather from / scatter into an array of
    `num_rows` rows, anywhere in a compiled module (fusions included)."""
    found, shapes = [], {}
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:  # a new computation: its parameters' shapes
            shapes = {m["name"]: _dims(m["dims"]) for m in _PARAM.finditer(header["params"])}
            continue
        defined = _DEFINED.match(line)
        if defined:
            shapes[defined["name"]] = _dims(defined["dims"])
        op = _ROW_OP.search(line)
        if op and shapes.get(op["operand"], (None,))[0] == num_rows:
            found.append((op["op"], shapes[op["operand"]], shapes[op["indices"]][0]))
    return found


@pytest.mark.parametrize(
    "make, gathers, scatters",
    [
        # (table shape -> how many gathers from / scatters into arrays of that shape)
        (lambda u: adagrad_jax.adagrad(0.1, unique_rows=u), {"VD": 1}, {"VD": 2}),
        (lambda u: adagrad_jax.proximal_adagrad(0.1, l1=0.01, unique_rows=u), {"VD": 2}, {"VD": 2}),
        # stack_slots=True: a row's two slots in one gather and one scatter.
        (
            lambda u: adagrad_jax.ftrl(0.1, l1=0.01, unique_rows=u, stack_slots=True),
            {"VD2": 1, "VD": 1},
            {"VD2": 1, "VD": 1},
        ),
        (
            lambda u: adagrad_jax.adagrad_da(0.1, l1=0.01, unique_rows=u, stack_slots=True),
            {"VD2": 1, "VD": 2},
            {"VD2": 1, "VD": 1},
        ),
        # The default, 0.2's layout: a gather and a scatter per slot, and the parameter's.
        (lambda u: adagrad_jax.ftrl(0.1, l1=0.01, unique_rows=u), {"VD": 3}, {"VD": 3}),
        (lambda u: adagrad_jax.adagrad_da(0.1, l1=0.01, unique_rows=u), {"VD": 4}, {"VD": 3}),
    ],
    ids=["adagrad", "proximal_adagrad", "ftrl-stacked", "adagrad_da-stacked", "ftrl", "adagrad_da"],
)
def test_table_step_row_traffic_is_one_state_gather_and_scatter_bounded_by_unique_rows(
    make, gathers, scatters
):
    """Read from the compiled step: every gather from and scatter into the table or
    its state moves `unique_rows` rows (not the 1,280 ids), and a row's whole
    optimizer state moves in one gather and one scatter with stack_slots=True:
    ftrl's (n, z) and adagrad_da's (z, G) are stacked in one (V, D, 2) array. The
    other gathers read the parameter (rules that read w; adagrad_da's w_0 too), the
    other scatter is apply_updates'."""
    vocab, dim, bound = 50_000, 16, 300
    compiled = _pooled_table_step(make(bound), vocab, dim, id_range=256)
    traffic = _row_traffic(compiled.as_text(), vocab)
    # The forward lookup gathers the 1,280 ids; every other row op moves `bound` rows.
    forward = [t for t in traffic if t == ("gather", (vocab, dim), 64 * 20)]
    optimizer = [t for t in traffic if t not in forward]
    assert len(forward) == 1, traffic
    assert all(count == bound for _, _, count in optimizer), traffic
    shapes = {"VD": (vocab, dim), "VD2": (vocab, dim, 2)}
    for op, want in (("gather", gathers), ("scatter", scatters)):
        got = {
            name: sum(1 for o, shape_, _ in optimizer if o == op and shape_ == shape)
            for name, shape in shapes.items()
        }
        assert got == {name: want.get(name, 0) for name in shapes}, (op, traffic)
