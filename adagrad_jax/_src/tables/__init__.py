"""Embedding tables: RowSparse, ids, the row engine, apply, row gradients and placement over a mesh."""
