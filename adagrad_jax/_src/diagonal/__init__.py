"""Diagonal Adagrad: the rule, its v0.1 names, coupled weight decay and the packed experiment."""
