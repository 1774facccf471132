"""The row-sparse machinery shared by every optimizer that trains embedding tables.

* `RowSparse` (`_row_sparse`): a table's gradient or update restricted to rows.
* ids (`_ids`): int32 conversion, padding, range rules, fixed-size dedup.
* `map_rule` (`_engine`): runs an optimizer's leaf rule on dense leaves and on
  the touched rows of tables, reading and writing only those rows.
* `apply_updates`, `on_row_values` (`_apply`) and `value_and_row_grad` (`_grad`).

An optimizer adds only its leaf rule; see `_engine`'s docstring.
"""

from adagrad_jax._rows._apply import apply_updates as apply_updates
from adagrad_jax._rows._apply import on_row_values as on_row_values
from adagrad_jax._rows._engine import map_rule as map_rule
from adagrad_jax._rows._grad import value_and_row_grad as value_and_row_grad
from adagrad_jax._rows._row_sparse import RowSparse as RowSparse
