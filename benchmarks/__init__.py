"""covidct benchmarks: `python -m benchmarks.run [--tiny]` (see run.py)."""
