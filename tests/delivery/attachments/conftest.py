"""Each attachment test gets a cache folder of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import override_settings


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path) -> Iterator[Path]:
    """Each test gets an empty cache folder, so no test sees another's entries."""
    folder = tmp_path / "cache"
    with override_settings(GMP_CACHE_DIR=str(folder)):
        yield folder
