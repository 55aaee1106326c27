"""hubbub-loadtest: fan-out, latency and correctness measurement (issue 5)."""
