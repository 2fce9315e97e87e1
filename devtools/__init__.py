"""Development helpers: real Redis, S3 and worker processes for tests, demo and benchmarks."""
