"""`make bench`: speed figures measured as ratios within one run on this machine.

Run with `python -m tests.bench.run` (`--quick` for a seconds-long dry run). The modules
here are not pytest tests: targets live in the benchmarks, not in timed tests.
"""
