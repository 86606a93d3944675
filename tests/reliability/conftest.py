from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Stack
from tests.smtp_sink import SmtpSink

RESULTS = pytest.StashKey[list[str]]()
HERE = Path(__file__).resolve().parent


def _asked_for(config: pytest.Config) -> bool:
    """The suite was named: its folder or a file in it on the command line, or `-m …reliability…`."""
    if "reliability" in (config.getoption("markexpr") or ""):
        return True
    for arg in config.args:
        path = Path(arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A run of the whole tree (`make test`) leaves this 12-minute suite to `make test-reliability`."""
    if _asked_for(config):
        return
    mine = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    if mine:
        config.hook.pytest_deselected(items=mine)
        items[:] = [item for item in items if item not in mine]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = terminalreporter.config.stash.get(RESULTS, [])
    if lines:
        terminalreporter.section("reliability results")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Keep a scenario's summary line for the end of the run (shown even without -s)."""
    lines = request.config.stash.setdefault(RESULTS, [])

    def add(line: str) -> None:
        lines.append(f"{request.node.name}: {line}")

    return add


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as server:
        yield server


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Stacks of real processes (env overrides as keywords); all stopped after the test."""
    stacks: list[Stack] = []

    def make(**overrides: Any) -> Stack:
        stack = Stack.for_test(tmp_path / f"stack{len(stacks)}", **overrides)
        stack.workdir.mkdir(parents=True, exist_ok=True)
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.stop_all()
            print(stack.logs())  # shown by pytest when the test failed
