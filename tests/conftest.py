"""Suite-wide rules.

A test skipped because a host tool is missing counts as not run: the ``test`` extra installs
every plugin's host, so here a skip is turned into a failure that says why. Only tests marked
``gpu`` may skip (CI has no GPU).

Host tools that create their loggers at import (ultralytics) keep writing to the stream pytest had
captured for the test that imported them; once that stream is closed, every later record would print
"--- Logging error ---" with a traceback onto the CURRENT test's stderr (seen: the sr app's one-line
error test after the detect tests, through ultralytics' patched ``PIL.Image.open``). Such records are
dropped instead, as logging does in production (``logging.raiseExceptions``).
"""

from __future__ import annotations

import logging

import pytest

logging.raiseExceptions = False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("gpu") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, which counts as not run (install the `test` extra): {reason}"
