"""`python -m benchmarks [--quick]`: every scenario side by side (see run.py)."""

from benchmarks.run import main

main()
