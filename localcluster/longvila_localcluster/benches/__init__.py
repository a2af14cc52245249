"""Benchmarks that need the local cluster or its S3 server (figures in docs/benchmarks.md)."""
