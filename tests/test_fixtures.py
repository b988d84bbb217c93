"""The suite's own fixtures (tests/conftest.py), tested in pytest sessions of their own (pytester)."""

from __future__ import annotations

from pathlib import Path

import pytest

# A module whose first test fails with an answer open on the module's engine (its traceback keeps the handle
# alive) and whose second asks that engine again.
FAILS_WITH_AN_ANSWER_OPEN = """
import pytest

from vreason_local.engine import Engine, EngineSettings, GenerationSettings
from vreason_local.media import Media


@pytest.fixture(scope="module")
def engine(tiny_model_factory):
    t = tiny_model_factory()
    with Engine(t.model_path, t.mmproj_path, EngineSettings(n_ctx=1024, hook=False)) as e:
        yield e


def test_fails_part_way_through_an_answer(engine):
    handle = engine.ask(Media.none(), "Count to three.", GenerationSettings(max_tokens=4))
    next(handle)
    assert handle.controller is not None, "fails with the answer open"


def test_asks_the_same_engine_again(engine):
    assert engine.ask(Media.none(), "Count to three.", GenerationSettings(max_tokens=4)).result().tokens
"""

# The same module with conftest's fixture overridden by one that does nothing: what one failure did before it.
WITHOUT_THE_FIXTURE = """

@pytest.fixture(autouse=True)
def _open_operations_closed():
    yield
"""


@pytest.mark.parametrize("fixture", [True, False])
def test_one_failure_with_an_answer_open_stays_one(pytester: pytest.Pytester, fixture: bool) -> None:
    """With conftest's `_open_operations_closed`, the answer a failed test left open is closed after it and the
    next test on the same engine passes; without it, that test fails too, with EngineBusy (which shows this
    test can tell the two apart)."""
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makepyfile(test_open=FAILS_WITH_AN_ANSWER_OPEN + ("" if fixture else WITHOUT_THE_FIXTURE))
    # without the plugins that keep state of their own for the session around this one
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:textual-snapshot", "-p", "no:asyncio")
    if fixture:
        result.assert_outcomes(passed=1, failed=1)
        result.stdout.no_fnmatch_line("*EngineBusy*")
    else:
        result.assert_outcomes(failed=2)
        result.stdout.fnmatch_lines(["*EngineBusy: an answer is still open on this engine*"])
