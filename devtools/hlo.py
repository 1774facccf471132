"""Reading compiled XLA programs: loops over big arrays, donated outputs, collectives.

XLA:CPU runs every top-level op of the entry computation (a fusion, a copy, a
concatenate, an unfused elementwise op) as its own loop over its output. So
the number of such ops whose output covers a parameter-sized array is the
number of passes a step makes over that parameter's memory. `collectives`
lists the communication of a sharded step with the bytes each op returns.
"""

from __future__ import annotations

import math
import re
from typing import Any

# Ops of the entry computation that run no loop over an array.
_FREE_OPS = frozenset(
    {"parameter", "constant", "bitcast", "tuple", "get-tuple-element", "after-all"}
)
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>\([^=]*?\)|\S+)\s+(?P<op>[\w\-]+)\("
)
_ARRAY = re.compile(r"\b[a-z]+\d*\[(?P<dims>[\d,]*)\]")
_COLLECTIVE = re.compile(
    r"=\s*(\(.*?\)|\S+)\s+(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)"
    r"(?:-start)?\("
)
_TYPED_ARRAY = re.compile(
    r"\b(pred|s8|u8|s16|u16|f16|bf16|s32|u32|f32|s64|u64|f64|c64|c128)\[([\d,]*)\]"
)
_BYTES = dict(pred=1, s8=1, u8=1, s16=2, u16=2, f16=2, bf16=2, s32=4, u32=4, f32=4, s64=8,
              u64=8, f64=8, c64=8, c128=16)


def entry_instructions(hlo_text: str) -> list[tuple[str, str]]:
    """(opcode, result shape) for each instruction of the ENTRY computation."""
    out: list[tuple[str, str]] = []
    inside = False
    for line in hlo_text.splitlines():
        if line.startswith("ENTRY "):
            inside = True
            continue
        if inside:
            if line.startswith("}"):
                break
            match = _INSTRUCTION.match(line)
            if match:
                out.append((match.group("op"), match.group("shape")))
    return out


def largest_array(shape: str) -> int:
    """Element count of the largest array in an HLO shape (tuples included)."""
    sizes = [
        math.prod(int(d) for d in m.group("dims").split(",") if d)
        for m in _ARRAY.finditer(shape)
    ]
    return max(sizes, default=0)


def loops_over(hlo_text: str, min_elements: int) -> list[tuple[str, str]]:
    """The top-level ops that loop over at least `min_elements` elements."""
    return [
        (op, shape)
        for op, shape in entry_instructions(hlo_text)
        if op not in _FREE_OPS and largest_array(shape) >= min_elements
    ]


def aliased_outputs(hlo_text: str) -> int:
    """How many outputs the compiled module aliases to (donated) inputs."""
    header = hlo_text.split("\n", 1)[0]
    aliases = header.split("input_output_alias=", 1)[-1].split("entry_computation_layout", 1)[0]
    if "input_output_alias=" not in header:
        return 0
    return aliases.count("may-alias") + aliases.count("must-alias")


def summary(compiled: Any, n_elements: int, min_elements: int) -> dict[str, Any]:
    """Loops, XLA's bytes accessed per element and memory of a compiled step."""
    text = compiled.as_text()
    out: dict[str, Any] = {
        "loops": len(loops_over(text, min_elements)),
        "aliased_outputs": aliased_outputs(text),
    }
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, list):  # older jax returned one dict per device
            cost = cost[0]
        out["xla_bytes_per_element"] = float(cost["bytes accessed"]) / n_elements
    except Exception:  # noqa: BLE001 - the analysis is optional on some backends
        out["xla_bytes_per_element"] = None
    try:
        mem = compiled.memory_analysis()
        out["peak_bytes"] = int(
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes
        )
    except Exception:  # noqa: BLE001
        out["peak_bytes"] = None
    return out


def collectives(hlo_text: str) -> list[tuple[str, int]]:
    """(kind, result bytes) of every collective op in a compiled HLO module's text."""
    found = []
    for line in hlo_text.splitlines():
        match = _COLLECTIVE.search(line)
        if match is None:
            continue
        nbytes = 0
        for dtype, dims in _TYPED_ARRAY.findall(match.group(1)):
            size = 1
            for d in filter(None, dims.split(",")):
                size *= int(d)
            nbytes += size * _BYTES[dtype]
        found.append((match.group(2), nbytes))
    return found
