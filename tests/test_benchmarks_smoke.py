"""The benchmark harness runs end to end at toy sizes (times are not checked).

The benchmarks run as a user runs them, ``python -m benchmarks --tiny`` in a
fresh interpreter from the repository root; the tests read what they write
(latest.json, latest.md, latest.png) and never import the benchmarks. The
method and scenario names below are the ones the harness promises to report.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# benchmarks/_cases.py: the dense scenarios' methods.
JAX_METHODS = ("optax", "adagrad_jax", "packed", "packed_split")
TORCH_METHODS = ("torch_foreach", "torch_fused")
# benchmarks/regularized.py: the family timed against adagrad.
REGULARIZED = ("proximal_adagrad", "adagrad_da", "ftrl")
STACKED = ("adagrad_da[stack_slots=True]", "ftrl[stack_slots=True]")  # slots stacked
# benchmarks/beyond_diagonal.py, tiny mode: the block sizes timed.
SHAMPOO_BLOCKS, FULL_MATRIX_BLOCKS = (16,), (1, 8)


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _benchmark(*args: str) -> str:
    """Runs ``python -m <args>`` from the repository root; returns its stdout."""
    result = subprocess.run(
        [sys.executable, "-m", *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    _benchmark("benchmarks", "--tiny", "--out", str(out))
    return json.loads((out / "latest.json").read_text()), out


def test_writes_json_markdown_and_plot(results):
    _, out = results
    assert json.loads((out / "latest.json").read_text())["meta"]["mode"] == "tiny"
    assert (out / "latest.md").read_text().startswith("Machine:")
    pytest.importorskip("matplotlib")
    assert (out / "latest.png").stat().st_size > 0


def test_every_scenario_and_method_has_rows(results):
    data, _ = results
    rows = data["rows"]
    scenarios = {r["scenario"] for r in rows}
    assert {"dense", "stream", "leaves", "compile"} <= scenarios
    methods = {r["method"] for r in rows if r["scenario"] == "dense"}
    assert set(JAX_METHODS) <= methods
    if _available("torch"):
        assert set(TORCH_METHODS) <= methods
    no_donation = [r for r in rows if r["scenario"] == "dense" and r["donate"] is False]
    assert {r["method"] for r in no_donation} == {"optax", "adagrad_jax", "packed"}


def test_rows_carry_ratios_bandwidth_and_program_facts(results):
    data, _ = results
    for r in data["rows"]:
        if r["scenario"] == "dense":
            assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
            assert r["ratio_vs_optax"] > 0 and r["gbps"] > 0
        if r["scenario"] == "dense" and r["method"] == "packed":
            assert r["loops"] == 1 and r["peak_bytes"] > 0
        if r["scenario"] == "leaves" and r["method"] == "optax" and r["leaves"] > 1:
            assert r["loops"] == 2 * r["leaves"]  # two loops per leaf
    assert all("ratio_vs_one_leaf" in r for r in data["rows"] if r["scenario"] == "leaves")


def test_sparse_scenario_is_run_or_explained(results):
    data, _ = results
    sparse = [r for r in data["rows"] if r["scenario"] == "sparse"]
    assert sparse or any("sparse" in note for note in data["notes"])


def test_layout_study_finds_one_in_place_loop_only_for_packed_elements():
    """benchmarks/layouts.py: the facts behind the interleaved (complex) layout."""
    if jax.default_backend() != "cpu":
        pytest.skip("loop counts are those of XLA:CPU")
    out = _benchmark("benchmarks.layouts", "--n", "65536", "--rounds", "1", "--json")
    rows = {r["layout"]: r for r in json.loads(out.strip().splitlines()[-1])}
    assert rows["two arrays (per leaf)"]["loops"] == "fusion + fusion"
    assert rows["(2, n) rows"]["loops"] == "fusion + copy"
    assert rows["complex64 w + iG"]["loops"] == "fusion"
    assert rows["complex64 w + iG"]["bytes_per_element"] == pytest.approx(20.0, abs=0.01)


def test_regularized_scenario_compares_the_family_against_adagrad(results):
    """benchmarks/regularized.py: dense and table rows, ratios and goals, in the report."""
    data, out = results
    assert not [n for n in data["notes"] if n.startswith("regularized")]
    rows = [r for r in data["rows"] if r["scenario"] == "regularized"]
    dense = [r for r in rows if r["case"].startswith("dense")]
    table = [r for r in rows if r["case"].startswith("sparse")]
    assert [r["method"] for r in dense] == ["adagrad", *REGULARIZED, *STACKED]
    assert {r["method"] for r in table} == {
        "sparse_adagrad", *REGULARIZED, *STACKED, "optax_dense", "optax_dense_with_grad"}
    for r in rows:
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert len(r["times_ms"]) == r["rounds"] > 0
    for r in dense + table:
        if r["method"] in REGULARIZED + STACKED:
            assert r["vs_baseline"] > 0 and isinstance(r["goal_met"], bool)
    assert dense[0]["vs_baseline"] == 1.0 and dense[0]["loops"] >= 1
    for r in table:
        if not r["method"].startswith("optax"):
            assert r["x_faster_than_optax_dense"] > 0
            assert r["aliased_mb"] > 0  # table and state updated in place
    markdown = (out / "latest.md").read_text()
    assert "### Regularized family" in markdown and "adagrad_jax.ftrl(l1, l2)" in markdown


def test_beyond_scenario_compares_shampoo_and_full_matrix_with_adagrad_and_adam(results):
    """benchmarks/beyond_diagonal.py: ordinary and preconditioner steps, state sizes, goal."""
    data, out = results
    assert not [n for n in data["notes"] if n.startswith("beyond")]
    rows = [r for r in data["rows"] if r["scenario"] == "beyond"]
    ordinary = [r for r in rows if r["step"] == "ordinary"]
    refresh = [r for r in rows if r["step"] == "preconditioner"]
    expected = ({("adagrad", None), ("adam", None)}
                | {("shampoo", b) for b in SHAMPOO_BLOCKS}
                | {("full_matrix_adagrad", b) for b in FULL_MATRIX_BLOCKS})
    assert {(r["method"], r["block_size"]) for r in ordinary} == expected
    assert {(r["method"], r["block_size"]) for r in refresh} == {
        m for m in expected if m[1] is not None}
    for r in rows:
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert len(r["times_ms"]) == r["rounds"] > 0
        assert r["vs_adagrad"] > 0 and r["vs_adam"] > 0
    sizes = {(r["method"], r["block_size"]): r["state_bytes_per_param"] for r in ordinary}
    # Per parameter (and a 4-byte step counter for the whole layer, if any).
    assert sizes[("adagrad", None)] == pytest.approx(4, abs=0.01)
    assert sizes[("adam", None)] == pytest.approx(8, abs=0.01)
    # full-matrix keeps G and P: 2 b floats per coordinate (b = 8: 64 bytes).
    assert sizes[("full_matrix_adagrad", 8)] == pytest.approx(2 * 8 * 4, abs=0.01)
    goal = [r for r in ordinary if "goal_met" in r]
    assert len(goal) == 1 and goal[0]["method"] == "shampoo"
    assert "### Beyond the diagonal" in (out / "latest.md").read_text()


def test_whole_step_scenario_reports_every_model_ratio_share_and_goal(results):
    """benchmarks/whole_step.py: whole training steps against optax and PyTorch, first."""
    data, out = results
    assert not [n for n in data["notes"] if n.startswith("whole_step.run failed")]
    rows = [r for r in data["rows"] if r["scenario"] == "whole_step"]
    models = {r["model"] for r in rows}
    assert {"mlp", "transformer", "recsys", "leaves"} <= models
    if _available("flax"):
        assert "nnx_mlp" in models
    for r in rows:
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert len(r["times_ms"]) == r["rounds"] > 0
        assert r["vs_optax"] > 0
    by = {(r["model"], r["method"]): r for r in rows}
    for model in ("mlp", "transformer", "recsys"):
        ours = by[(model, "adagrad_jax")]
        assert isinstance(ours["goal_vs_optax_met"], bool)
        assert ours["optimizer_share"] is not None and ours["aliased_outputs"] > 0
        if _available("torch"):
            assert by[(model, "torch_fused")]["vs_torch"] == 1.0
    assert by[("recsys", "adagrad_jax")]["x_faster_than_optax_dense"] > 0
    markdown = (out / "latest.md").read_text()
    assert markdown.index("### Whole training steps") < markdown.index("### Dense single leaf")


# benchmarks/tables.py, tiny mode: the cases (bags x ids per bag) and the members.
TABLE_CASES = {"16 lookups": 16, "8 bags of 4": 32}


def test_tables_scenario_times_ours_against_fbgemm_torch_and_the_members(results):
    """benchmarks/tables.py: every case and accumulator, its peers where installed, ratios."""
    data, out = results
    assert not [n for n in data["notes"] if n.startswith("tables.run failed")]
    rows = [r for r in data["rows"] if r["scenario"] == "tables"]
    fbgemm = _available("fbgemm_gpu") and jax.default_backend() == "cpu"
    torch = _available("torch") and jax.default_backend() == "cpu"
    for accumulator in ("per-coordinate", "row-wise"):
        for case, ids in TABLE_CASES.items():
            by = {r["method"]: r for r in rows
                  if r["case"] == case and r["accumulator"] == accumulator}
            expected = {"ours", "ours_no_loss"} | ({"fbgemm"} if fbgemm else set())
            if accumulator == "per-coordinate":
                expected |= {*REGULARIZED, *STACKED} | ({"torch"} if torch else set())
            assert set(by) == expected, (case, accumulator)
            ours = by["ours"]
            assert ours["ids"] == ids and 0 < ours["unique_ids"] <= ids
            assert ours["compile_s"] > 0 and ours["table_copies"] >= 0
            # The loss-dropped step has no forward gather, hence no copy of the table.
            assert by["ours_no_loss"]["table_copies"] == 0
            if fbgemm:
                assert ours["vs_fbgemm"] == pytest.approx(
                    ours["median_ms"] / by["fbgemm"]["median_ms"])
            else:
                assert ours["vs_fbgemm"] is None
                assert any("FBGEMM rows left out" in n for n in data["notes"])
            if "torch" in by:
                assert ours["vs_torch"] == pytest.approx(
                    ours["median_ms"] / by["torch"]["median_ms"])
            for m in REGULARIZED + STACKED:
                if m in by:
                    assert by[m]["vs_adagrad"] == pytest.approx(  # both without the loss
                        by[m]["median_ms"] / by["ours_no_loss"]["median_ms"])
            for r in by.values():
                assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
                assert len(r["times_ms"]) == r["rounds"] > 0
    assert "### Table steps on lookups and bags" in (out / "latest.md").read_text()


def test_tables_script_writes_its_report_with_machine_and_load(tmp_path):
    """python -m benchmarks.tables --tiny --markdown FILE: the record tables_latest.md keeps."""
    report = tmp_path / "tables.md"
    _benchmark("benchmarks.tables", "--tiny", "--no-torch", "--rounds", "2",
               "--markdown", str(report))
    text = report.read_text()
    assert text.startswith("Start: ") and "load average" in text and "\nEnd: " in text
    assert "| 1,000 x 8 | 8 bags of 4 | row-wise |" in text
    assert "adagrad_da ms (vs adagrad)" in text
    assert "ftrl[stack_slots=True] ms (vs adagrad)" in text


@pytest.mark.parametrize(
    "module, rows",
    [
        ("benchmarks.table_optimizers", ("adagrad_momentum", "compat.fbgemm_rowwise_adagrad",
                                         "stochastic_rounding")),
        ("benchmarks.memory", ("int8 accumulator", "sm3", "optax.adagrad")),
    ],
)
def test_issue_18_and_19_benchmarks_run_at_toy_sizes(module, rows):
    """benchmarks/table_optimizers.py and benchmarks/memory.py, ``--tiny``: a table with a
    row per method (the figures are in their *_latest.md files)."""
    out = _benchmark(module, "--tiny")
    assert "| group |" in out or "| optimizer |" in out
    for row in rows:
        assert row in out, (row, out[-2000:])
