from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.file_server import FileServer


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.close()
