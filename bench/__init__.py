"""telltale's benchmarks: `python bench/run.py` runs them all and writes BENCHMARKS.md.

Each module measures one thing and runs alone as `python -m bench.<name>` from the repository root.
Timings are reported, never asserted: the machines these run on are shared and noisy, so where a
figure has a baseline, both are measured side by side in the same run and reported as a ratio.
"""
