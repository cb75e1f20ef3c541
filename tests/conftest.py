"""Shared test configuration: one hypothesis profile (no deadline; derandomized in CI)."""
import os

from hypothesis import settings

settings.register_profile("lstm", deadline=None, derandomize=bool(os.environ.get("CI")), max_examples=60)
settings.load_profile("lstm")
