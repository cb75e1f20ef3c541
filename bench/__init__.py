"""Benchmarks of lstm-stream against what a user would otherwise run; results go to docs/benchmarks.md.

    python -m bench            # all of them (kernel, server, startup, memory)
    python -m bench.kernel     # or one; each takes --quick for a short smoke run
"""
