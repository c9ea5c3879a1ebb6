"""Development-only measurement, kept out of the shipped packages (pyproject.toml packages only
gtsrb, study and ui): ``python -m benchmarks.bench`` (training, inference and packing speed),
``python -m benchmarks.loadtest`` (the demo under load) and ``benchmarks/peak_memory.py`` (hostile
input's memory). Run them from the repository root."""
