"""pytest plugin (registered through the ``pytest11`` entry point).

Fixtures:
    recoverly_clock: a :class:`~recoverly.testing.ManualClock` installed as the
        default clock for the test, so retries and breakers never really sleep.

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from recoverly.testing import ManualClock, instant


@pytest.fixture
def recoverly_clock() -> Iterator[ManualClock]:
    """Run the test on a manual clock: sleeps return at once and are recorded."""
    with instant() as clock:
        yield clock
