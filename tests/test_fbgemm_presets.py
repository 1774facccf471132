"""`compat.fbgemm_rowwise_adagrad` and `compat.fbgemm_exact_adagrad` against FBGEMM.

Source: FBGEMM v1.8.0's rules, transcribed in float64 in
`tests/reference.py:fbgemm_rowwise_step` / `fbgemm_exact_step` (which cite
``fbgemm_gpu/codegen/genscript/optimizers.py``, the CUDA kernel template that
runs ``split_post_update`` and the CPU backward template), and FBGEMM itself.

Checked live (fbgemm-gpu-cpu 1.8.0 on torch 2.13.0+cpu, skipped where either is
absent): one V x D table on the host, trained by FBGEMM's TBE
(`SplitTableBatchedEmbeddingBagsCodegen`, its optimizer fused into the
backward) and by ours (`RowSparse` gradients of the same lookups, one per
occurrence, and `adagrad_jax.apply_updates`), 30 steps of Zipf-like ids with
duplicates, on the CPU paths where FBGEMM applies weight decay:

  * EXACT_ROWWISE_ADAGRAD, WeightDecayMode NONE / L2 / DECOUPLE, FP32 weights,
    ``PoolingMode.NONE`` and a table shared by two features
    (``feature_table_map=[0, 0]``, pooled sums);
  * the same three modes with FP16 weights (pooled; our table float16, our
    updates float32, rounded once when applied);
  * EXACT_ADAGRAD, mode NONE (``PoolingMode.NONE``).

Two more live checks document FBGEMM's silent omissions: its pooled FP32 path
for a table one feature uses ignores L2 and DECOUPLE (it trains as our
``weight_decay_mode="none"``), and EXACT_ADAGRAD ignores weight decay on every
path. Checked against the float64 transcription only, because FBGEMM runs them
on GPU only or not at all: ``max_norm`` (CUDA ``split_post_update``) and our
exact preset's "l2" and "decoupled" modes (FBGEMM's EXACT_ADAGRAD has none).

Tolerance (float32, u = 2**-24, first order): a step's accumulator takes t + D
rounded terms (t sums, D squares of a row-wise mean) and the L2 gradient two
more; the multiplier, the correction and the step add a few roundings relative
to the step and to the weight (a max-norm D / 2 + 4 more relative to the
weight). Each library is held to ``u * sum_t [(t + D + 8) |du_t| + 8 |w_t|]`` of
the float64 rule (du_t and w_t from it) and the two to twice that; accumulators
to ``(t + D + 8) u`` of a sum of ``(|g| + wd |w|)^2`` means. Not bit for bit in
float32: FBGEMM's CPU loop sums a row's squares in another order, and its eps
and weight_decay arrive as C++ doubles (PyTorch's float arguments), so part of
its arithmetic (the L2 gradient, the multiplier, the correction) is double.
A control (ours without the decay against FBGEMM with L2) is 2e4 times outside.

Measured (30 steps, V = 1000, D = 16, lr 0.0625, eps 1e-3, wd 0.25; largest
|ours - FBGEMM| over the largest |w|; in brackets the largest share of the bound
either library uses against the float64 rule):

  =======================  ===============  ===============  ===============
  EXACT_ROWWISE_ADAGRAD    NONE             L2               DECOUPLE
  =======================  ===============  ===============  ===============
  FP32, PoolingMode.NONE   9.5e-8 (10%)     9.7e-8 (15%)     2.4e-8 (11%)
  FP32, shared table       1.4e-7 (9%)      1.2e-7 (16%)     2.4e-8 (9%)
  FP16 weights (pooled)    0 (same bits)    3 of 16000       0 (same bits)
  =======================  ===============  ===============  ===============

FP16: the three entries differ by one float16 unit (a float32 result within
rounding of a float16 boundary: FBGEMM forms wd * w in double); the
float64 rule rounded to float16 after each step is within two units of ours
(2 to 5 entries differ). Accumulators agree with FBGEMM's to 2.3e-8 (bit for
bit without L2). EXACT_ADAGRAD, NONE (PoolingMode.NONE): 9.6e-8 (9%).

Transcription only (ours in float32 against the float64 rule, largest |diff|
over the largest |w|): row-wise with max_norm 1.0 and NONE / L2 / DECOUPLE
1.4e-7 / 1.5e-7 / 1.4e-7 (at most 13% of the bound); exact L2 / DECOUPLE
3.4e-7 / 1.5e-7 (13%, 11%); in float64 every case within 3e-16.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import adagrad_jax
from adagrad_jax import RowSparse, compat
from tests import reference

V, D = 1000, 16
NUM_STEPS = 30
U = 2.0**-24  # float32's unit roundoff
LR, EPS, WD = 0.0625, 1e-3, 0.25
BAGS = 48  # bags per feature and step
MODES = ("none", "l2", "decoupled")


# --- the data: lookups of Zipf-like ids, and their gradients ------------------------


def zipf_ids(rng, n):
    """Zipf-like ids (a = 1.2) over V rows, hot rows spread over the table."""
    perm = np.random.default_rng(0).permutation(V)
    return perm[(rng.zipf(1.2, size=n) - 1) % V]


def make_steps(*, features, pooled, seed=3):
    """NUM_STEPS batches. Each: FBGEMM's inputs (indices, offsets, the upstream
    gradient of its output) and every occurrence's id and gradient row (ours).

    Upstream gradients are multiples of 1/8 in [-2, 2]: every row's summed
    gradient is exact in float32 whatever the order of the sum.
    """
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(NUM_STEPS):
        bags = [zipf_ids(rng, rng.integers(0, 13)) for _ in range(features * BAGS)]  # feature-major
        indices = np.concatenate(bags).astype(np.int64)
        offsets = np.cumsum([0] + [len(b) for b in bags]).astype(np.int64)
        if pooled:
            upstream = rng.integers(-16, 17, size=(BAGS, features * D)) / 8.0
            values = np.concatenate(
                [
                    np.tile(upstream[i % BAGS, (i // BAGS) * D : (i // BAGS + 1) * D], (len(b), 1))
                    for i, b in enumerate(bags)
                ]
            )
        else:  # PoolingMode.NONE: one output row per id
            upstream = rng.integers(-16, 17, size=(len(indices), D)) / 8.0
            values = upstream
        steps.append(dict(indices=indices, offsets=offsets, upstream=upstream, values=values))
    return steps


def initial_table():
    return (np.random.default_rng(2).normal(size=(V, D)) * 0.3).astype(np.float32)


# --- the three runs: float64 rule, ours, FBGEMM -------------------------------------


def reference_run(steps, *, row_wise, mode, wd, max_norm=0.0, fp16=False):
    """The float64 rule (weights rounded to float16 after each step with `fp16`),
    with the first-order float32 bounds of the weights and the accumulator."""
    w = initial_table().astype(np.float16 if fp16 else np.float32).astype(np.float64)
    m = np.zeros(V if row_wise else (V, D))
    m_abs = np.zeros_like(m)
    bound = np.zeros((V, D))
    for t, step in enumerate(steps, start=1):
        g = np.zeros((V, D))
        np.add.at(g, step["indices"], step["values"])
        rows = np.unique(step["indices"])
        decay = wd if mode == "l2" else 0.0
        big = (np.abs(g[rows]) + decay * np.abs(w[rows])) ** 2
        m_abs[rows] += np.mean(big, axis=1) if row_wise else big
        if row_wise:
            w_new, m_new, du = reference.fbgemm_rowwise_step(
                w[rows],
                g[rows],
                m[rows],
                t,
                lr=LR,
                eps=EPS,
                weight_decay=wd,
                mode=mode,
                max_norm=max_norm,
            )
        else:
            w_new, m_new, du = reference.fbgemm_exact_step(
                w[rows], g[rows], m[rows], t, lr=LR, eps=EPS, weight_decay=wd, mode=mode
            )
        if fp16:
            w_new = w_new.astype(np.float16).astype(np.float64)
        w[rows], m[rows] = w_new, m_new
        # A max-norm adds the row's norm (D squares and a root) relative to w.
        bound[rows] += U * (
            (t + D + 8) * np.abs(du) + (8 + (D // 2 + 4) * (max_norm > 0)) * np.abs(w_new)
        )
    m_bound = (NUM_STEPS + D + 8) * U * m_abs
    return w, m, bound, m_bound


def ours_run(steps, tx, dtype=jnp.float32):
    """`tx` on the occurrences' RowSparse gradients (ids padded with -1), jitted."""
    width = max(len(s["indices"]) for s in steps)

    @jax.jit
    def step(params, state, ids, values):
        updates, state = tx.update(RowSparse(ids, values), state, params)
        return adagrad_jax.apply_updates(params, updates), state

    params = jnp.asarray(initial_table(), dtype)
    state = tx.init(params)
    for s in steps:
        n = len(s["indices"])
        ids = np.full(width, -1, np.int32)
        ids[:n] = s["indices"]
        values = np.zeros((width, D), np.float32)
        values[:n] = s["values"]
        # Gradients in float32, or in float64 for a float64 table (updates come back
        # in the gradient's dtype, except for float16 tables).
        grad_dtype = jnp.float64 if dtype == jnp.float64 else jnp.float32
        params, state = step(params, state, jnp.asarray(ids), jnp.asarray(values, grad_dtype))
    return np.asarray(params).astype(np.float64), np.asarray(
        adagrad_jax.accumulators(state), np.float64
    )


def fbgemm_modules():
    """FBGEMM's TBE classes, or a skip where fbgemm_gpu or torch is absent."""
    pytest.importorskip("torch")
    # The CPU wheel lacks FBGEMM's SSD lookup modules; importing its training module
    # warns about each (a DeprecationWarning) and works without them.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"(?s).*Failed to import: fbgemm_gpu\.", category=DeprecationWarning
        )
        pytest.importorskip("fbgemm_gpu")
        from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
            EmbeddingLocation,
            PoolingMode,
        )
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )
        from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode
    return dict(
        EmbOptimType=EmbOptimType,
        SparseType=SparseType,
        EmbeddingLocation=EmbeddingLocation,
        PoolingMode=PoolingMode,
        ComputeDevice=ComputeDevice,
        TBE=SplitTableBatchedEmbeddingBagsCodegen,
        WeightDecayMode=WeightDecayMode,
    )


def fbgemm_run(steps, *, row_wise, mode, wd, features=1, pooled=True, fp16=False):
    """FBGEMM's CPU TBE on the same lookups: (weights, momentum1) after the last step."""
    import torch

    f = fbgemm_modules()
    tbe = f["TBE"](
        [(V, D, f["EmbeddingLocation"].HOST, f["ComputeDevice"].CPU)],
        optimizer=f["EmbOptimType"].EXACT_ROWWISE_ADAGRAD
        if row_wise
        else f["EmbOptimType"].EXACT_ADAGRAD,
        pooling_mode=f["PoolingMode"].SUM if pooled else f["PoolingMode"].NONE,
        weights_precision=f["SparseType"].FP16 if fp16 else f["SparseType"].FP32,
        output_dtype=f["SparseType"].FP32,
        learning_rate=LR,
        eps=EPS,
        weight_decay=wd,
        weight_decay_mode=getattr(
            f["WeightDecayMode"], {"none": "NONE", "l2": "L2", "decoupled": "DECOUPLE"}[mode]
        ),
        feature_table_map=[0] * features,
        stochastic_rounding=False,  # (FBGEMM's CPU kernels round FP16 to nearest anyway)
    )
    with torch.no_grad():
        weights = tbe.split_embedding_weights()[0]
        weights.copy_(torch.from_numpy(initial_table()).to(weights.dtype))
    for s in steps:
        out = tbe(torch.from_numpy(s["indices"]), torch.from_numpy(s["offsets"]))
        out.backward(torch.from_numpy(s["upstream"].astype(np.float32)).to(out.dtype))
    w = tbe.split_embedding_weights()[0].detach().float().numpy().astype(np.float64)
    (m,) = tbe.split_optimizer_states()[0]
    return w, m.detach().numpy().astype(np.float64).reshape((V,) if row_wise else (V, D))


def preset(row_wise, mode, wd, max_norm=0.0):
    if row_wise:
        return compat.fbgemm_rowwise_adagrad(
            LR, EPS, weight_decay=wd, weight_decay_mode=mode, max_norm=max_norm
        )
    return compat.fbgemm_exact_adagrad(LR, EPS, weight_decay=wd, weight_decay_mode=mode)


def relative(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_the_batches_have_what_the_parity_tests_need():
    """Duplicates within a step, empty bags, and many touched and untouched rows."""
    for features, pooled in ((1, False), (2, True)):
        steps = make_steps(features=features, pooled=pooled)
        s = steps[0]
        assert np.any(np.diff(s["offsets"]) == 0)  # empty bags
        distinct = np.unique(s["indices"])
        assert 100 < len(distinct) < len(s["indices"])  # duplicates, a spread of rows
        touched = np.unique(np.concatenate([s["indices"] for s in steps]))
        assert len(touched) < V  # some rows never move: the decay is lazy


# --- live: FBGEMM's CPU paths that apply weight decay --------------------------------

LIVE_PATHS = {
    "nobag": dict(features=1, pooled=False, fp16=False),
    "shared_table": dict(features=2, pooled=True, fp16=False),
    "fp16": dict(features=1, pooled=True, fp16=True),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", list(LIVE_PATHS))
def test_rowwise_matches_fbgemm_live(path, mode):
    fbgemm_modules()
    options = LIVE_PATHS[path]
    wd = 0.0 if mode == "none" else WD
    steps = make_steps(features=options["features"], pooled=options["pooled"])
    w_fb, m_fb = fbgemm_run(steps, row_wise=True, mode=mode, wd=wd, **options)
    dtype = jnp.float16 if options["fp16"] else jnp.float32
    w_us, m_us = ours_run(steps, preset(True, mode, wd), dtype)
    w_ref, m_ref, bound, m_bound = reference_run(
        steps, row_wise=True, mode=mode, wd=wd, fp16=options["fp16"]
    )
    if options["fp16"]:
        # Both round a float32 row to float16 once per step: the same bits, except
        # where the float32 results (equal to float32 rounding) straddle a float16
        # rounding boundary, which one entry in thousands does at some step and keeps
        # (a unit or two). The float64 rule rounded to float16 after each step: the same.
        for other in (w_fb, w_ref):
            larger = np.maximum(np.abs(other), np.abs(w_us)).astype(np.float16)
            spacing = np.spacing(larger).astype(np.float64)
            assert np.all(np.abs(w_us - other) <= 2 * spacing)
            assert np.mean(w_us != other) < 1e-3
    else:
        for who, w in (("FBGEMM", w_fb), ("ours", w_us)):
            np.testing.assert_array_less(np.abs(w - w_ref), bound + 1e-30, err_msg=who)
        np.testing.assert_array_less(np.abs(w_us - w_fb), 2 * bound + 1e-30)
        assert relative(w_us, w_fb) < 1e-6
    for who, m in (("FBGEMM", m_fb), ("ours", m_us)):
        np.testing.assert_array_less(np.abs(m - m_ref), m_bound + 1e-30, err_msg=who)
    # Untouched rows: neither FBGEMM nor ours decays them.
    untouched = np.setdiff1d(np.arange(V), np.concatenate([s["indices"] for s in steps]))
    start = initial_table().astype(np.float16 if options["fp16"] else np.float32)
    np.testing.assert_array_equal(w_us[untouched], start[untouched])
    np.testing.assert_array_equal(w_fb[untouched], start[untouched])


def test_the_live_bound_rejects_a_missing_decay():
    """Control: ours without the decay ("none") against FBGEMM with L2 is far outside."""
    fbgemm_modules()
    steps = make_steps(features=1, pooled=False)
    w_fb, _ = fbgemm_run(steps, row_wise=True, mode="l2", wd=WD, pooled=False)
    w_wrong, _ = ours_run(steps, preset(True, "none", 0.0))
    _, _, bound, _ = reference_run(steps, row_wise=True, mode="l2", wd=WD)
    assert np.max(np.abs(w_wrong - w_fb) / (2 * bound + 1e-30)) > 100


def test_exact_matches_fbgemm_live():
    fbgemm_modules()
    steps = make_steps(features=1, pooled=False)
    w_fb, m_fb = fbgemm_run(steps, row_wise=False, mode="none", wd=0.0, pooled=False)
    w_us, m_us = ours_run(steps, preset(False, "none", 0.0))
    w_ref, m_ref, bound, m_bound = reference_run(steps, row_wise=False, mode="none", wd=0.0)
    for who, w, m in (("FBGEMM", w_fb, m_fb), ("ours", w_us, m_us)):
        np.testing.assert_array_less(np.abs(w - w_ref), bound + 1e-30, err_msg=who)
        np.testing.assert_array_less(np.abs(m - m_ref), m_bound + 1e-30, err_msg=who)
    np.testing.assert_array_less(np.abs(w_us - w_fb), 2 * bound + 1e-30)
    assert relative(w_us, w_fb) < 1e-6


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_fbgemm_ignores_decay_on_its_fast_path_and_for_exact_adagrad(mode):
    """Documented in the presets' "Differences from FBGEMM": FBGEMM's pooled FP32
    path for a table one feature uses (row-wise), and EXACT_ADAGRAD everywhere,
    train with a weight decay set as without it, as ours with mode "none"."""
    fbgemm_modules()
    steps = make_steps(features=1, pooled=True)
    for row_wise in (True, False):
        w_fb, _ = fbgemm_run(steps, row_wise=row_wise, mode=mode, wd=WD)
        w_plain, _ = ours_run(steps, preset(row_wise, "none", 0.0))
        w_decayed, _ = ours_run(steps, preset(row_wise, mode, WD))
        assert relative(w_plain, w_fb) < 1e-6
        assert relative(w_decayed, w_fb) > 1e-3


# --- transcription: max_norm and the exact preset's decay modes ----------------------


TRANSCRIBED = [(True, mode, 1.0) for mode in MODES] + [(False, m, 0.0) for m in ("l2", "decoupled")]


@pytest.mark.parametrize(
    "row_wise, mode, max_norm",
    TRANSCRIBED,
    ids=[f"{'rowwise' if r else 'exact'}-{m}-max_norm{n}" for r, m, n in TRANSCRIBED],
)
def test_matches_the_float64_transcription_on_a_table(row_wise, mode, max_norm):
    """Source: FBGEMM's kernels as transcribed in tests/reference.py; rows touched
    by duplicate and padded ids, the rest untouched (lazy: no decay, no rescale)."""
    steps = make_steps(features=1, pooled=False)
    w_us, m_us = ours_run(steps, preset(row_wise, mode, WD, max_norm))
    w_ref, m_ref, bound, m_bound = reference_run(
        steps, row_wise=row_wise, mode=mode, wd=WD, max_norm=max_norm
    )
    np.testing.assert_array_less(np.abs(w_us - w_ref), bound + 1e-30)
    np.testing.assert_array_less(np.abs(m_us - m_ref), m_bound + 1e-30)
    if max_norm:
        touched = np.unique(np.concatenate([s["indices"] for s in steps]))
        norms = np.linalg.norm(w_us[touched], axis=1)
        assert np.max(norms) <= max_norm * (1 + 1e-6)
        assert np.max(np.linalg.norm(initial_table(), axis=1)) > 1.5 * max_norm  # it clipped
    else:
        assert relative(w_us, w_ref) < 1e-6


@pytest.mark.parametrize("row_wise", [True, False])
def test_float64_agrees_with_the_transcription_to_rounding(row_wise):
    """In float64 the preset is the transcribed rule, decay and max-norm included."""
    steps = make_steps(features=1, pooled=False)[:5]
    mode, max_norm = ("l2", 1.0) if row_wise else ("decoupled", 0.0)
    with jax.enable_x64(True):
        w_us, m_us = ours_run(steps, preset(row_wise, mode, WD, max_norm), jnp.float64)
    w_ref, m_ref, _, _ = reference_run(
        steps, row_wise=row_wise, mode=mode, wd=WD, max_norm=max_norm
    )
    np.testing.assert_allclose(w_us, w_ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(m_us, m_ref, rtol=1e-13, atol=1e-15)


# --- low precision: float32 arithmetic, one rounding -------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_rows_are_rounded_once(dtype):
    """The update is the exact float32 step (w_new - w in float32); applying it
    lands on w_new rounded to the table's dtype once, as FBGEMM stores FP16 rows."""
    w = jnp.asarray(initial_table()[:8], dtype)
    ids = jnp.array([1, 3, 3, 6, -1], jnp.int32)
    values = jnp.asarray(np.random.default_rng(0).integers(-16, 17, size=(5, D)) / 8.0, dtype)
    tx = compat.fbgemm_rowwise_adagrad(LR, EPS, weight_decay=WD, weight_decay_mode="l2")
    updates, _ = tx.update(RowSparse(ids, values), tx.init(w), w)
    assert updates.values.dtype == jnp.float32
    new = adagrad_jax.apply_updates(w, updates)
    w32 = np.asarray(w, np.float32)
    x = w32.copy()  # the float32 result: w + the float32 update
    live = np.asarray(updates.indices) < 8  # the other entries are dead (ids >= 8)
    np.add.at(x, np.asarray(updates.indices)[live], np.asarray(updates.values)[live])
    np.testing.assert_array_equal(
        np.asarray(new, np.float32), np.asarray(jnp.asarray(x).astype(dtype), np.float32)
    )
    # ... which is the rule in float32: g' = g + wd * w, m = mean(g'^2), w_new.
    g = np.zeros((8, D), np.float32)
    np.add.at(g, np.array([1, 3, 3, 6]), np.asarray(values[:4], np.float32))
    rows = np.array([1, 3, 6])
    g2 = g[rows] + np.float32(WD) * w32[rows]
    mult = np.float32(LR) / (np.sqrt(np.mean(g2 * g2, axis=1, keepdims=True)) + np.float32(EPS))
    np.testing.assert_allclose(
        x[rows], (1 - mult * np.float32(WD)) * w32[rows] - mult * g[rows], rtol=1e-6
    )


def test_stochastic_rounding_lands_on_a_neighbour_and_repeats_with_the_seed():
    """``stochastic_rounding=True``: each new bfloat16 weight is one of the two
    neighbours of the float32 result; the same seed gives the same bits."""
    w = jnp.asarray(initial_table()[:8], jnp.bfloat16)
    g = RowSparse(jnp.array([0, 2, 2, 5]), jnp.full((4, D), 0.25, jnp.bfloat16))

    def run(seed):
        tx = compat.fbgemm_rowwise_adagrad(
            LR,
            EPS,
            weight_decay=WD,
            weight_decay_mode="decoupled",
            stochastic_rounding=True,
            seed=seed,
        )
        u, state = tx.update(g, tx.init(w), w)
        assert jax.tree.leaves(adagrad_jax.accumulators(state))[0].shape == (8,)
        return np.asarray(adagrad_jax.apply_updates(w, u).astype(jnp.float32))

    plain = compat.fbgemm_rowwise_adagrad(LR, EPS, weight_decay=WD, weight_decay_mode="decoupled")
    u, _ = plain.update(g, plain.init(w), w)
    x = np.asarray(w, np.float32).copy()
    live = np.asarray(u.indices) < 8
    np.add.at(x, np.asarray(u.indices)[live], np.asarray(u.values)[live])  # the float32 result
    down = np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))
    got = run(7)
    up = np.asarray(
        jnp.nextafter(
            jnp.asarray(down, jnp.bfloat16),
            jnp.where(x > down, jnp.inf, -jnp.inf).astype(jnp.bfloat16),
        ).astype(jnp.float32)
    )
    assert np.all((got == down) | (got == up))
    np.testing.assert_array_equal(got, run(7))


def test_weight_decay_modes_of_fbgemm_that_are_not_supported_raise():
    for mode in ("counter", "cowclip", "decouple_global", "L1"):
        with pytest.raises(ValueError, match="COUNTER, COWCLIP and DECOUPLE_GLOBAL"):
            compat.fbgemm_rowwise_adagrad(weight_decay_mode=mode)
    with pytest.raises(ValueError, match="Did you mean 'decoupled'"):
        compat.fbgemm_exact_adagrad(weight_decay_mode="decouple")
