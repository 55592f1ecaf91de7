"""The twisted_sse test suite."""
