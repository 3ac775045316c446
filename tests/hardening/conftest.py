"""The hardening suite's hypothesis profile, the count of examples run, and shared fixtures.

Every property test uses the ``hardening`` profile: a fixed number of examples, derandomized (the
same examples on every run, so CI is reproducible) and no example database. A test counts each
example it runs (``with count_example(): ...``, a session fixture); the totals are printed at the
end of the session (``hardening: N hypothesis examples run …``) and written to the JSON file
``$HARDENING_REPORT`` when that is set. Every test uses one torch thread.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import os
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.errors import StopTest, UnsatisfiedAssumption

#: Examples per property test (``HARDENING_EXAMPLES`` overrides it for a longer local hunt).
EXAMPLES = int(os.environ.get("HARDENING_EXAMPLES", "200"))

settings.register_profile(
    "hardening",
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    # Generous: an example takes milliseconds; this catches hangs, not a busy machine.
    deadline=datetime.timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

_examples: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="session")
def count_example() -> Callable[[], contextlib.AbstractContextManager[None]]:
    """Return a context manager that counts the example run inside it.

    Use it around a property test's body: an example counts when it passes or fails, not when
    hypothesis discards it (an invalid draw). Session-scoped, so hypothesis accepts it in
    ``@given`` tests; the running test is read from ``PYTEST_CURRENT_TEST``.
    """

    @contextlib.contextmanager
    def count() -> Iterator[None]:
        nodeid = os.environ.get("PYTEST_CURRENT_TEST", "unknown (call)").rsplit(" ", 1)[0]
        try:
            yield
        except (StopTest, UnsatisfiedAssumption):
            raise  # discarded by hypothesis: not an example
        except BaseException:
            _examples[nodeid] += 1
            raise
        _examples[nodeid] += 1

    return count


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One torch thread: the suite runs beside other work on small (2-core) machines."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print (and record) how many hypothesis examples the hardening tests ran."""
    if not _examples:
        return
    failed = {report.nodeid for report in terminalreporter.stats.get("failed", [])}
    failures = sum(1 for nodeid in _examples if nodeid in failed)
    total = sum(_examples.values())
    terminalreporter.write_sep("-", "hardening fuzz")
    for nodeid, count in sorted(_examples.items()):
        terminalreporter.write_line(f"{count:6d}  {nodeid}")
    terminalreporter.write_line(
        f"hardening: {total} hypothesis examples run in {len(_examples)} property tests, {failures} failed"
    )
    report = os.environ.get("HARDENING_REPORT")
    if report:
        with open(report, "w", encoding="utf-8") as handle:
            json.dump(
                {"examples": dict(_examples), "total": total, "failed_tests": failures}, handle, indent=2
            )
