"""Args text that several optimizers share, written once: `nonfinite`, `out_of_range`, ...

A docstring asks for a shared entry with a line of its Args section that holds
only the argument's name in braces::

    Args:
      learning_rate: lr, a number >= 0 or an optax schedule. Default 0.01.
      {initial_accumulator_value}
        Must be >= 0. Default 0.
      {nonfinite}

and the function carries the decorator `shared_args`, which replaces each such
line with the entry of `ENTRIES`, wrapped at the line's indentation, when the
module is imported. Lines indented below the placeholder continue the same
entry (what is particular to that optimizer, its default where it differs).
Only whole-line placeholders are replaced, so the braces of an update rule
(``G_{t-1}``) stay as written. `help()`, Sphinx autodoc and doctests read
``__doc__``, which holds the final text; `tests/test_docstrings.py` checks that
every public docstring documenting one of these arguments starts its entry with
the shared text.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from typing import TypeVar

_F = TypeVar("_F", bound=Callable)

NONFINITE = (
    'nonfinite: what a NaN or +-inf gradient entry does. ``"propagate"``'
    " (default): the rule as written, as in optax, PyTorch and Keras; the NaN"
    " reaches the state and the parameters it feeds (for good: a sum of squares"
    " stays NaN), so it shows in the loss at the step that caused it, and the"
    " compiled step is exactly the plain one. It is the default because skipping"
    " silently changes what is trained and hides the bug that made the NaN."
    ' ``"skip_coordinate"``: a coordinate whose gradient entry is not finite'
    " gets a zero update and counts as a zero gradient in the optimizer's"
    " statistics (a diagonal accumulator keeps its value); the other"
    ' coordinates step. ``"skip_step"``: if any entry is not finite, every'
    " parameter and every array of the optimizer's state (step counts included) stays"
    " as it was,"
    " as ``optax.apply_if_finite`` does. With a skip policy the state also"
    " counts, in ``nonfinite_steps``, the steps that met a NaN or inf. Every"
    " optimizer of the package takes the same argument."
)

OUT_OF_RANGE = (
    "out_of_range: what `RowSparse` ids >= the table's row count V do."
    ' ``"drop"`` (default): they are skipped, like padding; no other row'
    ' changes. ``"error"``: the step raises, naming the first such id (as'
    " given: int64 ids unclipped), its position and the leaf. Eager calls raise"
    " a ``ValueError`` at once; a step under plain `jax.jit` raises a"
    " ``jax.errors.JaxRuntimeError`` carrying the same message when it runs (a"
    " host callback that runs only when an id is out of range; no `checkify`"
    " needed), also on a step sharded over several devices or processes (every"
    " device runs the check, so all of them raise together and none waits in a"
    " collective)."
)

UNIQUE_ROWS = (
    "unique_rows: the most distinct live row ids a `RowSparse` gradient of a"
    " step may hold, or None (default: as many as it has ids). A step's"
    " gathers, rule and scatters run over that many rows and its update"
    " `RowSparse` has that many entries, instead of one per id: a bag batch"
    " of 40,960 ids with about 9,000 distinct rows runs faster with"
    " ``unique_rows=10_240``. A step whose batch holds more distinct ids raises"
    " (eagerly a ``ValueError``; under `jax.jit` a ``jax.errors.JaxRuntimeError``"
    ' carrying the message, as ``out_of_range="error"`` does), naming the count,'
    " and updates no row: ids are never dropped silently. A bound of k or more"
    " for k ids is the same as None."
)

STACK_SLOTS = (
    "stack_slots: keep the two per-coordinate slots in two trees like the"
    " parameters (False, default) or in one array per parameter, on a last axis"
    " of 2 (True). Stacked, a table row's whole state is one contiguous run"
    " that a `RowSparse` step reads in one gather and writes in one scatter (a"
    " bag step on a 1M x 64 table: 1.1x-1.3x `adagrad`'s time, against 1.4x"
    " apart): pass True for embedding tables. Apart is faster for dense"
    " gradients on XLA:CPU, which does not vectorize an elementwise step whose"
    " output is stacked (a dense 16M-element step: about 3x slower stacked)."
    " Both give the same numbers."
)

STOCHASTIC_ROUNDING = (
    "stochastic_rounding: round the new weights of bfloat16 and float16"
    " parameters stochastically (up with probability (x - lo) / (hi - lo)"
    " between the two neighbours lo < hi of the float32 result x, so the"
    " expected new weight is x), and likewise a bfloat16 or float16"
    " accumulator (`accumulator_dtype`). Default False (round to nearest, where"
    " a bfloat16 weight stops moving once its steps fall under half its"
    " spacing). The updates of those parameters then come back in float32,"
    " as the exact difference between the rounded and the old weight, which"
    " `adagrad_jax.apply_updates` and `optax.apply_updates` add in float32;"
    " `update` needs `params`, and the state becomes"
    " ``StochasticRoundingState(count, inner_state)``. Other dtypes are not"
    " touched."
)

SEED = (
    "seed: a Python int in [0, 2**32) that, with the step count, keys the"
    " random numbers of `stochastic_rounding`. Default 0. Each entry's number"
    " is a hash of (seed, step, leaf, row, column): the same seed rounds the"
    " same way on one device or sharded, for a table trained densely or row"
    " by row."
)

INT8 = (
    "With ``accumulator_dtype='int8'`` every sum of squares of rank >= 2 is kept in 8 bits:"
    " a float-like code (G over its block's scale, to 3 mantissa bits over 32 octaves:"
    " levels 6.7-12.5% apart) and a float32 scale per block of 64 entries of the last"
    " axis (a bound on the block's sums: it starts at their largest and grows by the"
    " block's largest square each step); blocks lie within rows, so tables update their"
    " touched rows' blocks only: about 0.27x the float32 accumulator's bytes for rows of"
    " 64 or more. Each step decodes G, adds |g|^2 in float32, uses that sum for the step"
    " and codes it again with stochastic rounding (unbiased, keyed like"
    " ``stochastic_rounding``; the state is then a ``StochasticRoundingState``): a"
    " stored sum is within about 10% of the float32 one and may come down one level,"
    " its expectation is the sum. Vectors and scalars keep float32."
    " `adagrad_jax.accumulators` decodes."
)

INITIAL_ACCUMULATOR_VALUE = (
    "initial_accumulator_value: tau, the value the sum of squared gradients"
    " holds at `init`, before the first step adds to it."
)

PAD_ID = (
    "pad_id: a row id treated as padding in `RowSparse` gradients (skipped, like"
    " the negative ids). Default None."
)

# The shared Args entries, by argument name.
ENTRIES = {
    "nonfinite": NONFINITE,
    "out_of_range": OUT_OF_RANGE,
    "unique_rows": UNIQUE_ROWS,
    "stack_slots": STACK_SLOTS,
    "stochastic_rounding": STOCHASTIC_ROUNDING,
    "int8": INT8,
    "seed": SEED,
    "initial_accumulator_value": INITIAL_ACCUMULATOR_VALUE,
    "pad_id": PAD_ID,
}

_PLACEHOLDER = re.compile(r"(?P<indent> *)\{(?P<name>\w+)\}")
_WIDTH = 80


def expand(doc: str) -> str:
    """`doc` with every whole-line ``{name}`` placeholder replaced by its entry."""
    lines = []
    for line in doc.split("\n"):
        match = _PLACEHOLDER.fullmatch(line)
        if match is None:
            lines.append(line)
            continue
        name, indent = match.group("name"), match.group("indent")
        if name not in ENTRIES:
            raise KeyError(
                f"docstring placeholder {{{name}}}: no shared entry of that name;"
                f" the entries are {sorted(ENTRIES)} (adagrad_jax/_src/core/docs.py)."
            )
        # An argument's entry ("name: ...") hangs; a continuation (int8) does not.
        hang = "  " if ENTRIES[name].startswith(f"{name}:") else ""
        lines += textwrap.wrap(
            ENTRIES[name],
            width=_WIDTH,
            initial_indent=indent,
            subsequent_indent=indent + hang,
            break_long_words=False,
            break_on_hyphens=False,
        )
    return "\n".join(lines)


def shared_args(fn: _F) -> _F:
    """Decorator: fills the shared Args entries of `fn`'s docstring (see the module)."""
    fn.__doc__ = expand(fn.__doc__ or "")
    return fn
