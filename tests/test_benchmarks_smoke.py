"""The benchmark harness runs end to end at toy sizes (times are not checked)."""

from __future__ import annotations

import json

import pytest

from benchmarks import _cases, run


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return run.main(["--tiny", "--out", str(out)]), out


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
    assert set(_cases.JAX_METHODS) <= methods
    if _cases.torch_available():
        assert set(_cases.TORCH_METHODS) <= methods
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
    import jax

    from benchmarks import layouts

    if jax.default_backend() != "cpu":
        pytest.skip("loop counts are those of XLA:CPU")
    rows = {r["layout"]: r for r in layouts.main(["--n", "65536", "--rounds", "1"])}
    assert rows["two arrays (per leaf)"]["loops"] == "fusion + fusion"
    assert rows["(2, n) rows"]["loops"] == "fusion + copy"
    assert rows["complex64 w + iG"]["loops"] == "fusion"
    assert rows["complex64 w + iG"]["bytes_per_element"] == pytest.approx(20.0, abs=0.01)


def test_regularized_scenario_compares_the_family_against_adagrad(results):
    """benchmarks/regularized.py: dense and table rows, ratios and goals, in the report."""
    from benchmarks import regularized

    data, out = results
    assert not [n for n in data["notes"] if n.startswith("regularized")]
    rows = [r for r in data["rows"] if r["scenario"] == "regularized"]
    dense = [r for r in rows if r["case"].startswith("dense")]
    table = [r for r in rows if r["case"].startswith("sparse")]
    assert [r["method"] for r in dense] == ["adagrad", *regularized.REGULARIZED]
    assert {r["method"] for r in table} == {
        "sparse_adagrad", *regularized.REGULARIZED, "optax_dense", "optax_dense_with_grad"}
    for r in rows:
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert len(r["times_ms"]) == r["rounds"] > 0
    for r in dense + table:
        if r["method"] in regularized.REGULARIZED:
            assert r["vs_baseline"] > 0 and isinstance(r["goal_met"], bool)
    assert dense[0]["vs_baseline"] == 1.0 and dense[0]["loops"] >= 1
    for r in table:
        if not r["method"].startswith("optax"):
            assert r["x_faster_than_optax_dense"] > 0
            assert r["aliased_mb"] > 0  # table and state updated in place
    markdown = (out / "latest.md").read_text()
    assert "### Regularized family" in markdown and "adagrad_jax.ftrl(l1, l2)" in markdown
