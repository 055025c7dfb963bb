"""cellfarm benchmarks against named peers: `python -m bench`."""
