"""Which memory layout gives XLA:CPU one in-place loop for an Adagrad step?

The study behind `adagrad_jax.packed_adagrad`. Each layout holds a float32
parameter w and its accumulator G for n elements; the step is
``G += g*g; w -= lr*g/(sqrt(G) + eps)`` with w and G donated. For each layout:
the top-level loops over the data in the compiled program (copies included),
XLA's estimate of the bytes moved per element, and the time per step, all
layouts timed round-robin.

    .venv/bin/python benchmarks/layouts.py [--n 16777216] [--rounds 20] [--json]

Findings on XLA:CPU (jax 0.10): two arrays give two loops (28 B/element). Any
single array holding both w and G where an output element reads another index
((2, n) rows, (n, 2) columns, [w; G] concatenated) compiles to one loop plus a
full copy, because XLA cannot update it in place. A complex64 element holding
w + iG, or a uint64 holding both bit patterns (64-bit mode only), is updated
in place by one loop: 20 B/element.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks import _timing
from devtools import hlo

LR, EPS = 0.01, 1e-8
F32 = jnp.float32


def _update(w, s, g):
    s = s + g * g
    return w - F32(LR) * g / (jnp.sqrt(s) + F32(EPS)), s


def _two_arrays(state, g):
    return _update(*state, g)


def _rows(buf, g):  # (2, n)
    return jnp.stack(_update(buf[0], buf[1], g))


def _columns(buf, g):  # (n, 2)
    return jnp.stack(_update(buf[:, 0], buf[:, 1], g), axis=1)


def _concatenated(buf, g):  # [w; G]
    n = g.shape[0]
    return jnp.concatenate(_update(buf[:n], buf[n:], g))


def _complex(buf, g):  # w + iG
    return lax.complex(*_update(jnp.real(buf), jnp.imag(buf), g))


def _uint64(buf, g):  # low 32 bits w, high 32 bits G
    low = lax.convert_element_type(buf & jnp.uint64(0xFFFFFFFF), jnp.uint32)
    high = lax.convert_element_type(buf >> jnp.uint64(32), jnp.uint32)
    w, s = _update(
        lax.bitcast_convert_type(low, jnp.float32), lax.bitcast_convert_type(high, jnp.float32), g
    )
    low = lax.convert_element_type(lax.bitcast_convert_type(w, jnp.uint32), jnp.uint64)
    high = lax.convert_element_type(lax.bitcast_convert_type(s, jnp.uint32), jnp.uint64)
    return low | (high << jnp.uint64(32))


LAYOUTS: dict[str, tuple[Callable, Callable[[int], Any]]] = {
    "two arrays (per leaf)": (_two_arrays, lambda n: (jnp.ones(n, F32), jnp.ones(n, F32))),
    "(2, n) rows": (_rows, lambda n: jnp.ones((2, n), F32)),
    "(n, 2) columns": (_columns, lambda n: jnp.ones((n, 2), F32)),
    "[w; G] concatenated": (_concatenated, lambda n: jnp.ones(2 * n, F32)),
    "complex64 w + iG": (_complex, lambda n: jnp.ones(n, jnp.complex64)),
    "uint64 bits (x64 only)": (_uint64, lambda n: jnp.ones(n, jnp.uint64)),
}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=16 * 2**20)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", action="store_true",
                        help="also print the rows as one JSON line, after the table")
    args = parser.parse_args(argv)
    n = args.n
    with jax.enable_x64(True):  # for the uint64 layout; every array is built explicitly
        g = jnp.full((n,), 0.5, jnp.float32)
        steps, rows = {}, []
        for name, (fn, make) in LAYOUTS.items():
            box = [make(n)]
            compiled = jax.jit(fn, donate_argnums=0).lower(box[0], g).compile()
            loops = hlo.loops_over(compiled.as_text(), n)
            summary = hlo.summary(compiled, n, n)
            rows.append(
                {
                    "layout": name,
                    "loops": " + ".join(op for op, _ in loops),
                    "bytes_per_element": summary["xla_bytes_per_element"],
                }
            )

            def step(compiled=compiled, box=box):
                box[0] = compiled(box[0], g)
                jax.block_until_ready(box[0])

            steps[name] = step
        times = _timing.round_robin(steps, rounds=args.rounds)
    print(f"n = {n:,} float32, donated, {args.rounds} rounds\n")
    print("| layout | top-level loops | XLA bytes/elt | median ms | min-max |")
    print("|---|---|---|---|---|")
    for row in rows:
        row.update(_timing.stats_ms(times[row["layout"]]))
        print(
            f"| {row['layout']} | {row['loops']} | {row['bytes_per_element']:.0f} |"
            f" {row['median_ms']:.2f} | {row['min_ms']:.2f}-{row['max_ms']:.2f} |"
        )
    if args.json:
        print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
