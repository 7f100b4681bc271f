"""What the tests and the benchmarks share: local servers, data builders, run helpers."""
