"""Tables (markdown) and the plot of a benchmark run."""

from __future__ import annotations

import pathlib
from typing import Any


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _range(row: dict[str, Any], lo: str, hi: str, digits: int = 2) -> str:
    return f"{row[lo]:.{digits}f}-{row[hi]:.{digits}f}"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _mb(value: Any) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    meta = results["meta"]
    out = [
        (
            f"Machine: {meta.get('processor')}, {meta.get('cpu_count')} cores, backend"
            f" {meta.get('backend')}; jax {meta.get('jax')}, optax {meta.get('optax')},"
            f" torch {meta.get('torch', 'not installed')}. Load average at start"
            f" {_load(meta.get('load_average_at_start'))}, at end"
            f" {_load(meta.get('load_average_at_end'))}. Times: median and min-max over"
            f" {meta.get('rounds')} round-robin rounds (all methods of a scenario"
            " interleaved). Hyperparameters: lr=0.01, tau=0.1, eps=1e-7."
        ),
    ]

    whole = [r for r in rows if r["scenario"] == "whole_step"]
    if whole:
        from benchmarks.whole_step import footnote
        from benchmarks.whole_step import table as whole_table

        out.append("\n### Whole training steps (benchmarks/whole_step.py)\n")
        out.append(whole_table(whole))
        out.append("\n" + footnote(whole))

    dense = [r for r in rows if r["scenario"] == "dense"]
    if dense:
        out.append("\n### Dense single leaf, float32 (update and apply, jit)\n")
        body = [
            [
                r["case"], r["label"], _f(r["median_ms"]), _range(r, "min_ms", "max_ms"),
                _ratio(r.get("ratio_vs_optax")), _ratio(r.get("ratio_vs_torch_fused")),
                "" if r["donate"] is not False else _ratio(r.get("ratio_vs_donated")),
                _f(r.get("gbps"), 1), _f(r.get("pct_stream"), 0),
                _f(r.get("loops")), _f(r.get("xla_bytes_per_element"), 0),
            ]
            for r in dense
        ]
        out.append(_table(
            ["size", "method", "median ms", "min-max", "vs optax", "vs torch fused",
             "vs donated", "GB/s", "best % of stream", "loops", "XLA bytes/elt"],
            body,
        ))
        stream = [r for r in rows if r["scenario"] == "stream"]
        out.append(
            "\nStreaming reference, same rounds (x += 1 in place, 8 bytes per element),"
            " median / best: "
            + "; ".join(f"{r['case']}: {r['gbps']:.1f} / {r['best_gbps']:.1f} GB/s" for r in stream)
            + ". GB/s (at the median) counts the 20 bytes per element a step must move"
            " (read w, G, g; write w, G), whatever the program really moves; 'best % of"
            " stream' compares the fastest round of a step with the fastest round of the"
            " stream (at 1M everything fits in cache); 'XLA bytes/elt' is what the"
            " compiled program moves by XLA's cost analysis; 'loops' counts the"
            " top-level loops over the parameter in the compiled program."
        )

        out.append("\n### Peak memory of a step (compiled memory analysis)\n")
        body = [
            [r["case"], r["label"], _mb(r.get("peak_bytes")),
             _f(None if r.get("peak_bytes") is None else r["peak_bytes"] / r["n_elements"], 1)
             + (" (analytic)" if r.get("peak_is_analytic") else "")]
            for r in dense
        ]
        out.append(_table(["size", "method", "peak MiB", "bytes/element"], body))
        out.append(
            "\nThe minimum is 12 bytes per element (w, G and g). Without donation XLA"
            " allocates new outputs next to the inputs; PyTorch updates in place."
        )

    leaves = [r for r in rows if r["scenario"] == "leaves"]
    if leaves:
        out.append("\n### Many leaves (donated)\n")
        body = [
            [r["case"], r["label"], _f(r["median_ms"]), _range(r, "min_ms", "max_ms"),
             _ratio(r.get("ratio_vs_optax")), _ratio(r.get("ratio_vs_torch_fused")),
             _ratio(r.get("ratio_vs_one_leaf")), _f(r.get("loops"))]
            for r in leaves
        ]
        out.append(_table(
            ["leaves x size", "method", "median ms", "min-max", "vs optax",
             "vs torch fused", "vs one leaf", "loops"],
            body,
        ))

    compile_rows = [r for r in rows if r["scenario"] == "compile"]
    if compile_rows:
        out.append("\n### Compile time of the step (trace, lower and compile)\n")
        body = [
            [r["case"], r["method"], _f(r["median_s"], 3), _range(r, "min_s", "max_s", 3),
             _ratio(r.get("ratio_vs_optax"))]
            for r in compile_rows
        ]
        out.append(_table(["leaves", "method", "median s", "min-max", "vs optax"], body))

    sparse = [r for r in rows if r["scenario"] == "sparse"]
    if sparse:
        out.append("\n### Sparse embedding (benchmarks/sparse_embedding.py)\n")
        keys = [k for k in sparse[0] if k != "scenario" and not isinstance(sparse[0][k], list)]
        for r in sparse[1:]:
            keys += [k for k in r if k not in keys and k != "scenario"
                     and not isinstance(r[k], list)]
        body = [[_f(r.get(k), 3) for k in keys] for r in sparse]
        out.append(_table(keys, body))

    regularized = [r for r in rows if r["scenario"] == "regularized"]
    if regularized:
        from benchmarks.regularized import table

        out.append(
            "\n### Regularized family: proximal_adagrad, adagrad_da, ftrl"
            " (benchmarks/regularized.py)\n"
        )
        out.append(table(regularized))
        rounds = {r["method"]: r["rounds"] for r in regularized}
        out.append(
            f"\nRounds (this scenario's own): dense {rounds.get('adagrad')}; table"
            f" {rounds.get('sparse_adagrad')}, of which the optax dense-gradient steps"
            f" ran in {rounds.get('optax_dense')}."
            " l1 = l2 = 1e-3, lr = 0.01, tau = 0.1; jit-compiled update and apply,"
            " donated. 'vs (sparse_)adagrad' is the ratio of medians to"
            " adagrad_jax.adagrad (dense rows) or adagrad_jax.sparse_adagrad (table"
            " rows) in the same round-robin rounds. Goals: at most 1.3x; on the table"
            " also at least 50x faster than optax.adagrad on the dense gradient"
            " (given; set for the full 1,000,000 x 64 table, not the --quick one). The"
            " dense-gradient steps run on every 10th round only."
        )

    tables = [r for r in rows if r["scenario"] == "tables"]
    if tables:
        from benchmarks.tables import table as tables_table

        out.append("\n### Table steps on lookups and bags: ours, FBGEMM's TBE, PyTorch"
                   " (benchmarks/tables.py)\n")
        out.append(tables_table(tables))
        out.append(
            "\nA full step: pooled (sum) lookup of Zipf ids (exponent 1.2), loss ="
            " sum(pooled * upstream), gradient, Adagrad update of the touched rows. Median"
            " (min-max) ms over the scenario's own round-robin rounds; ratios of medians"
            " (ours / peer; member / adagrad, per-coordinate). Goals (issue 17): ours at"
            " most FBGEMM CPU's time; per-coordinate at least 2x faster than PyTorch"
            " (ours / torch <= 0.5x); members at most 1.3x adagrad's."
        )

    beyond = [r for r in rows if r["scenario"] == "beyond"]
    if beyond:
        from benchmarks.beyond_diagonal import table as beyond_table

        out.append("\n### Beyond the diagonal: full_matrix_adagrad and shampoo"
                   " (benchmarks/beyond_diagonal.py)\n")
        out.append(beyond_table(beyond))
        out.append(
            "\nOrdinary steps: preconditioners cached and not due (statistics, roots"
            " applied, grafting); preconditioner steps: preconditioner_every=1, every"
            " step runs the eigendecompositions. float32, jit-compiled update and apply,"
            " donated; ratios of medians in the same round-robin rounds. State: bytes of"
            " the optimizer state per parameter (adagrad 4, adam 8). Goal: shampoo's"
            " ordinary step at most 3x adagrad's on the 1024 x 1024 layer (CPU)."
        )

    for note in results.get("notes", []):
        out.append(f"\nNote: {note}")
    return "\n".join(out) + "\n"


def _load(value: Any) -> str:
    if not value:
        return "-"
    return "/".join(f"{x:.1f}" for x in value)


_COLORS = {
    "optax": "tab:blue",
    "adagrad_jax": "tab:orange",
    "packed": "tab:green",
    "packed_split": "tab:olive",
    "torch_foreach": "tab:gray",
    "torch_fused": "tab:red",
    # benchmarks/whole_step.py
    "adagrad_jax_flat": "tab:brown",
    "adagrad_jax_row_wise": "gold",
    "no_opt": "lightgray",
    "no_opt_dense": "silver",
    "torch_no_opt": "dimgray",
    # benchmarks/regularized.py
    "adagrad": "tab:orange",
    "sparse_adagrad": "tab:orange",
    "proximal_adagrad": "tab:purple",
    "adagrad_da": "tab:brown",
    "ftrl": "tab:cyan",
    "optax_dense": "tab:blue",
    "optax_dense_with_grad": "tab:pink",
}


def plot(results: dict[str, Any], path: pathlib.Path) -> pathlib.Path | None:
    """A PNG with one panel per scenario; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        results["notes"].append("matplotlib not installed: no plot written.")
        return None
    rows = results["rows"]
    panels = [
        ("whole_step", "Whole training steps: ms per step (median, min-max)"),
        ("dense", "Dense single leaf: ms per step (median, min-max)"),
        ("leaves", "Many leaves vs one leaf: ms per step"),
        ("compile", "Compile time: seconds"),
        ("regularized", "Regularized family vs (sparse_)adagrad: ms per step"),
    ]
    panels = [(s, t) for s, t in panels if any(r["scenario"] == s for r in rows)]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 4.2 * len(panels)), squeeze=False)
    for ax, (scenario, title) in zip(axes[:, 0], panels):
        sub = [r for r in rows if r["scenario"] == scenario]
        if scenario == "whole_step":  # short case names, one bar colour per method
            from benchmarks.whole_step import LABELS

            sub = [{**r, "case": r["short"], "label": LABELS[r["method"]]} for r in sub]
        cases = list(dict.fromkeys(r["case"] for r in sub))
        labels = list(dict.fromkeys(r["label"] for r in sub))
        key, lo, hi = (("median_s", "min_s", "max_s") if scenario == "compile"
                       else ("median_ms", "min_ms", "max_ms"))
        width = 0.8 / max(len(labels), 1)
        for j, lab in enumerate(labels):
            xs, ys, err_lo, err_hi = [], [], [], []
            for i, case in enumerate(cases):
                match = [r for r in sub if r["case"] == case and r["label"] == lab]
                if match:
                    r = match[0]
                    xs.append(i + (j - (len(labels) - 1) / 2) * width)
                    ys.append(r[key])
                    err_lo.append(r[key] - r[lo])
                    err_hi.append(r[hi] - r[key])
            method = next(r["method"] for r in sub if r["label"] == lab)
            no_donation = any(r["label"] == lab and r["donate"] is False for r in sub)
            ax.bar(xs, ys, width, yerr=[err_lo, err_hi], capsize=2, label=lab,
                   color=_COLORS.get(method), alpha=0.45 if no_donation else 1.0,
                   hatch="//" if no_donation else None)
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(cases)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend(fontsize=7, ncol=3)
        ax.grid(axis="y", alpha=0.3)
    meta = results["meta"]
    fig.suptitle(f"adagrad_jax benchmarks ({meta['mode']}): {meta.get('processor')},"
                 f" {meta.get('cpu_count')} cores, {meta['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
