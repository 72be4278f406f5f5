"""How `make test` spreads the suite over its pytest-xdist workers (`--dist loadgroup`).

A test file is one unit of work, as with `--dist loadfile` (its tests share the file's local stack),
unless a test names a group of its own (`@pytest.mark.xdist_group`): a test that starts a stack of
its own, or one long enough to deserve a worker, runs beside its file's other tests, not after them.

The units start longest first (with `--no-loadscope-reorder`; xdist's default sorts them by their
number of tests, which started the 1-3 test chaos file last of all and made it the suite's tail).
The whole run can end no sooner than its longest unit, so that one has to start at once.
"""

from __future__ import annotations

from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

# Files whose tests each deserve a worker (and a stack) of their own: their `xdist_group` marks
# name them for the order below. The scheduler has to be told here: it sees node ids only, and
# pytest 9 ignores the `@group` suffix xdist's loadgroup writes into them (`Node.nodeid` is now
# derived from `_id`, not `_nodeid`), so under plain `--dist loadgroup` every test became a unit of
# its own and a file's tests, sharing a module's stack and state, were spread over the workers.
OWN_WORKER_FILES = frozenset({"tests/e2e/test_chaos.py"})

# The longest units, longest first, by `--durations` (README, "CI in ten"); then every other
# end-to-end file (each starts a local stack: 20-80 s before its first test), then the unit files.
LONGEST_FIRST = (
    "chaos-all-faults",
    "tests/e2e/test_waiting_costs_nothing.py",
    "chaos-budget",
    "chaos-daily-budget",
    "tests/e2e/test_chaos.py",
    "tests/e2e/test_cli.py",
    "tests/e2e/test_bad_input.py",
    "tests/e2e/test_openapi_conformance.py",
    "tests/e2e/test_faults.py",
    "tests/e2e/test_fair_share.py",
    "tests/e2e/test_least_privilege.py",
    "tests/e2e/test_pipeline.py",
    "tests/e2e/test_batch_actions.py",
)


def _group(item: pytest.Item) -> str:
    mark = item.get_closest_marker("xdist_group")
    if mark is None:
        return item.nodeid.split("::", 1)[0]
    return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))


def _rank(item: pytest.Item) -> tuple[int, int]:
    group = _group(item)
    if group in LONGEST_FIRST:
        return (0, LONGEST_FIRST.index(group))
    return (1, 0) if "/e2e/" in item.nodeid else (2, 0)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the groups into node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(_group(item)))


@pytest.hookimpl(tryfirst=True)  # after every reordering of the items, before xdist sends their ids
def pytest_collection_finish(session: pytest.Session) -> None:
    # Only on xdist's workers: run in one process, a file split into groups would start its
    # module-scoped stack once per group.
    if hasattr(session.config, "workerinput"):
        session.items.sort(key=_rank)  # stable: a file's tests keep their order


class FileScheduling(LoadScopeScheduling):
    """A file is one unit of work, except the tests of OWN_WORKER_FILES, each a unit."""

    def _split_scope(self, nodeid: str) -> str:
        path = nodeid.split("::", 1)[0]
        return nodeid if path in OWN_WORKER_FILES else path


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadScopeScheduling | None:
    if config.getoption("dist") != "loadgroup":
        return None
    return FileScheduling(config, log)
