"""Container image tests: `image`-marked ones build with podman and are opt-in.

They run with LONGVILA_IMAGE_TESTS=1 or when `-m` selects the marker (`-m image`); a plain
`pytest` skips them, as CI does (no podman there, and a build needs minutes and PyPI).
"""

from __future__ import annotations

import os

import pytest


def _opted_in(config: pytest.Config) -> bool:
    markexpr = config.getoption("-m") or ""
    return os.environ.get("LONGVILA_IMAGE_TESTS") == "1" or (
        "image" in markexpr and "not image" not in markexpr
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A skip marker, not a skip in a fixture: the module-scoped build fixture would run first.
    if _opted_in(config):
        return
    skip = pytest.mark.skip(
        reason="opt-in container test: LONGVILA_IMAGE_TESTS=1 or -m image (docs/images.md)"
    )
    for item in items:
        if item.get_closest_marker("image"):
            item.add_marker(skip)
