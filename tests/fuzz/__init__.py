"""The fuzz suite: hypothesis against the decoder, the engine in-process and a live daemon, with witness
streams checked bit for bit (docs/operations.md, "Fuzzing"). `python -m pytest tests/fuzz` runs the bounded
suite (CI); `python -m tests.fuzz --minutes 30` a long run."""
