"""Embedding tables: RowSparse, ids, the row engine, apply, row gradients, placement."""
