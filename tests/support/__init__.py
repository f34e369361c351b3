"""Helpers shared by the tests and the benchmarks, so each exists once: event factories, API Gateway events,
environment wiring, waiting on conditions, and read-model checks."""
