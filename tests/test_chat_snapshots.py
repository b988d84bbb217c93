"""Pictures of the chat's main screens (pytest-textual-snapshot), dark and light, at 80x24 and large.

Deterministic by construction: the app is made with `show_timings=False` (no measured time is drawn),
thumbnails use `HalfcellImage`, the model is greedy on fixed random weights, and the state each picture
shows is asserted before it is taken (a lost click must not pass as an empty screen).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_chat_app import FRAMES, GEN, VR, ask, ready, until
from textual.widgets import Input
from textual_image.widget import HalfcellImage

from vreason_local.chat.app import ChatApp
from vreason_local.chat.config import ChatConfig
from vreason_local.chat.options import ChatOptions
from vreason_local.chat.screens import ModelScreen
from vreason_local.chat.store import ChatStore
from vreason_local.clips import make_clip
from vreason_local.engine import EngineSettings


async def still(pilot) -> None:
    """No blinking cursor in the picture (its phase depends on when it is taken)."""
    for box in pilot.app.query(Input):
        box.cursor_blink = False
    await pilot.pause(0.05)


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory("qwen25vl")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("snap") / "clip.mp4", seconds=4.0, fps=10.0, size=(224, 168))


@pytest.fixture
def make(tiny, clip, tmp_path):
    apps = []

    def factory(theme: str = "textual-dark", **changes) -> ChatApp:
        options = ChatOptions(str(tiny.model_path), str(tiny.mmproj_path), clip, FRAMES, GEN, EngineSettings(), VR)
        store = ChatStore(tmp_path / f"chats{len(apps)}.db")
        app = ChatApp(
            replace(options, **changes), store, config=ChatConfig(theme), show_timings=False, image_class=HalfcellImage
        )
        apps.append((app, store))
        return app

    yield factory
    for app, store in apps:
        app.close_engine()
        store.close()


@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
def test_main_screen_80x24(snap_compare, make, theme):
    app = make(theme)

    async def run_before(pilot):
        await ready(pilot)
        assert len(app.query(".thumb")) == 6
        await still(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
def test_answered_large(snap_compare, make, theme):
    app = make(theme, mode="vreason")

    async def run_before(pilot):
        await ready(pilot)
        view = await ask(pilot, "What happens?")
        assert view.answer is not None and len(view.answer.tokens) == 12
        await pilot.pause(0.3)  # the chart's redraw timer
        await still(pilot)

    assert snap_compare(app, terminal_size=(150, 45), run_before=run_before)


def test_no_model_screen(snap_compare, make):
    app = make(model="qwen2.5-vl-3b", mmproj=None)

    async def run_before(pilot):
        await until(pilot, lambda: isinstance(app.screen, ModelScreen) and app.screen.query("#no-model"))
        assert "not downloaded" in str(app.screen.query_one("#model-problem").content)
        # the message names this run's temporary Hugging Face cache: masked
        app.screen.query_one("#model-problem").update("model qwen2.5-vl-3b is not downloaded (cache path masked)")
        app.status("not ready · model not downloaded (masked)")
        await still(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
