"""metrobus benchmarks (not part of the test suite): ``scripts/bench`` or ``python -m benchmarks``."""
