"""Benchmarks of famo-rl: balancer cost, training throughput, start-up time, re-evaluation.

Run each from the repository root as a module, e.g. ``python -m benchmarks.balancers``; see
``benchmarks/README.md``.
"""
