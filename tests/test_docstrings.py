"""Args text that several optimizers share is written once and reaches every docstring.

Source: `adagrad_jax/_src/core/docs.py`, whose `ENTRIES` hold the shared Args
entries (`nonfinite`, `out_of_range`, `initial_accumulator_value`, `pad_id`)
and whose `shared_args` decorator puts them in place of ``{name}`` lines. Each
test reads the final docstrings, as `help()`, Sphinx autodoc and doctest do.
"""

from __future__ import annotations

import doctest
import inspect
import pathlib
import pydoc
import re

import pytest

import adagrad_jax
from adagrad_jax import compat, experimental, schedules, sharding
from adagrad_jax._src.core import docs

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _public_callables() -> dict[str, object]:
    found = {}
    for module in (adagrad_jax, compat, experimental, schedules, sharding):
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and not inspect.isclass(obj) and not inspect.ismodule(obj):
                found.setdefault(f"{module.__name__}.{name}", obj)
    return found


PUBLIC = _public_callables()
# The optimizer constructors: every one takes `nonfinite` (the shared text says so).
OPTIMIZERS = {
    name: obj for name, obj in PUBLIC.items() if "nonfinite" in inspect.signature(obj).parameters
}


def _normalised(text: str) -> str:
    return " ".join(text.split())


def args_entries(doc: str) -> dict[str, str]:
    """The entries of a Google-style Args section: {argument: its text, one line}."""
    lines = inspect.cleandoc(doc).splitlines()
    if "Args:" not in lines:
        return {}  # a one-line alias (sparse_adagrad) documents its arguments elsewhere
    start = lines.index("Args:") + 1
    entries: dict[str, list[str]] = {}
    current = None
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break  # the next section (Returns:, Raises:, ...)
        match = re.match(r"^  (\w+): ", line)
        if match:
            current = match.group(1)
            entries[current] = [line.strip()]
        elif current is not None and line.strip():
            entries[current].append(line.strip())
    return {name: _normalised(" ".join(text)) for name, text in entries.items()}


def test_the_optimizers_are_found():
    # 20 optimizer constructors at writing: 13 in adagrad_jax, 6 presets in compat,
    # packed_adagrad in experimental.
    assert len(OPTIMIZERS) >= 20, sorted(OPTIMIZERS)
    assert "adagrad_jax.compat.torch_adagrad" in OPTIMIZERS
    assert "adagrad_jax.experimental.packed_adagrad" in OPTIMIZERS


@pytest.mark.parametrize("argument", sorted(docs.ENTRIES))
def test_every_docstring_documenting_a_shared_argument_carries_the_shared_text(argument):
    """The entry starts with the shared text, word for word; what follows (deeper
    indented lines in the source) is particular to that optimizer. Only the v0.1
    aliases, whose docstrings are one line, leave Args out."""
    shared = _normalised(docs.ENTRIES[argument])
    carriers = []
    for name, obj in OPTIMIZERS.items():
        if argument not in inspect.signature(obj).parameters:
            continue
        entries = args_entries(obj.__doc__)
        if not entries:
            continue
        assert argument in entries, f"{name}: Args does not document {argument}"
        assert entries[argument].startswith(shared), (
            f"{name}: the {argument} entry is not the shared text of"
            f" adagrad_jax/_src/core/docs.py; write {{{argument}}} in its Args.\n"
            f"found:  {entries[argument]}\nshared: {shared}"
        )
        carriers.append(name)
    # At writing: nonfinite 18, initial_accumulator_value 15, out_of_range 5, pad_id 5,
    # stack_slots 2 (ftrl, adagrad_da).
    # "int8" continues accumulator_dtype's entry (not an argument of its own).
    least = {"nonfinite": 18, "initial_accumulator_value": 15, "stack_slots": 2, "int8": 0}
    assert len(carriers) >= least.get(argument, 5)


@pytest.mark.parametrize(
    ("argument", "default"), [("nonfinite", "propagate"), ("out_of_range", "drop")]
)
def test_the_default_the_shared_text_names_is_every_signatures_default(argument, default):
    assert f'``"{default}"`` (default)' in docs.ENTRIES[argument]
    for name, obj in OPTIMIZERS.items():
        parameters = inspect.signature(obj).parameters
        if argument in parameters:
            assert parameters[argument].default == default, name


def test_the_shared_text_is_written_once_in_the_sources():
    """No module repeats a shared entry by hand: its opening words occur in docs.py only."""
    for argument, text in docs.ENTRIES.items():
        opening = " ".join(text.split()[:8])
        pattern = re.compile(r"\s+".join(re.escape(w) for w in opening.split()))
        holders = [
            str(path.relative_to(ROOT))
            for path in sorted((ROOT / "adagrad_jax").rglob("*.py"))
            if pattern.search(re.sub(r'"\s*\n\s*"', "", path.read_text()))
        ]
        assert holders == ["adagrad_jax/_src/core/docs.py"], (argument, holders)


def test_help_and_doctest_see_the_final_text():
    shared = _normalised(docs.NONFINITE)
    assert shared in _normalised(pydoc.render_doc(adagrad_jax.ftrl, renderer=pydoc.plaintext))
    module = inspect.getmodule(adagrad_jax.adagrad)
    tests = doctest.DocTestFinder().find(module)
    adagrad_doc = next(t for t in tests if t.name == f"{module.__name__}.adagrad")
    assert shared in _normalised(adagrad_doc.docstring)
    assert adagrad_doc.examples, "the Example still runs as a doctest"
    assert "{nonfinite}" not in adagrad_jax.adagrad.__doc__


def test_expand_replaces_whole_line_placeholders_only():
    doc = "Rule::\n\n    G_{t} = G_{t-1} + g^2\n\nArgs:\n  {pad_id}\n    More.\n"
    doc += "  x: {pad_id} inline.\n"
    out = docs.expand(doc)
    assert "G_{t} = G_{t-1} + g^2" in out  # braces of a formula stay
    assert "  x: {pad_id} inline." in out  # only a line holding just the placeholder
    assert "\n  pad_id: a row id treated as padding" in out
    assert _normalised(docs.PAD_ID) in _normalised(out)
    assert "    More." in out  # the optimizer's own continuation follows the entry


def test_expand_wraps_at_the_placeholders_indentation():
    out = docs.expand("Args:\n      {nonfinite}\n")
    lines = out.splitlines()[1:]
    assert lines[0].startswith("      nonfinite: ")
    assert all(line.startswith("        ") for line in lines[1:])
    assert max(len(line) for line in lines) <= 80


def test_an_unknown_placeholder_is_an_error_naming_the_entries():
    with pytest.raises(KeyError, match=r"\{nonfinit\}.*'nonfinite'"):
        docs.expand("Args:\n  {nonfinit}\n")
