"""Helpers that the tests and the benchmarks share; not part of the package.

- `devtools.hlo`: reading compiled XLA programs (loops over big arrays, donated
  outputs, collectives and their bytes).
- `devtools.models`: the models and data of the whole-step benchmark (MLP,
  transformer, recommendation model with row-sparse tables), the Zipf id draw
  and the optimizers the benchmark methods stand for.

The wheel ships `adagrad_jax` only (pyproject's ``[tool.setuptools.packages.find]``
includes ``adagrad_jax*``); run tests and benchmarks from the repository root,
where this folder is importable.
"""
