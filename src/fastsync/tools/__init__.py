"""Developer-facing tools: parity checks, profiler, benchmarks helpers."""
