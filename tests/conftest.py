"""Shared fixtures. Each resource's fixtures live in their own plugin module below."""

pytest_plugins: list[str] = [
    "tests.fixtures_redis",
    "tests.fixtures_vendors",
    "tests.fixtures_prometheus",
    "tests.fixtures_proxy",
    "tests.fixtures_clients",
]
