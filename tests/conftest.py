"""Shared fixtures live in tests/fixtures/; this file only wires them in."""

pytest_plugins = [
    "tests.fixtures.db",
    "tests.fixtures.tiny_model",
    "tests.fixtures.discord",
    "tests.fixtures.smollm2",
    "tests.fixtures.cli",
    "tests.fixtures.vllm",
]
