"""Downloading a registry model from `vreason chat`'s model screen, and `pull`'s progress reports.

The real app (Textual pilot) and the real `download.pull` fetch real bytes from the local Hub-like server of
test_registry_hub (its `fake_hub` and `hf_env` fixtures, imported so both files share one server), reached
through HF_ENDPOINT exactly as a user would point the app at a mirror.
"""

from __future__ import annotations

from test_chat_app import clip, make_app, options, store, tiny, until  # noqa: F401  (fixtures)
from test_registry_hub import fake_hub, hf_env  # noqa: F401  (fixtures)
from textual.widgets import OptionList, ProgressBar, Static

from vreason_local import download, registry
from vreason_local.chat.screens import ModelChoice, ModelScreen

NAME = "qwen2.5-vl-3b"


def test_pull_reports_growing_byte_counts_that_end_at_each_files_size(hf_env, fake_hub):  # noqa: F811
    spec = registry.get_spec(NAME)
    data = fake_hub.add_spec(spec, size=3_500_000)  # > 3 MiB: several reports per file
    reports: list[tuple[str, int, int | None]] = []
    download.pull(NAME, endpoint=fake_hub.url, progress=False, on_progress=lambda *r: reports.append(r))
    for filename, payload in data.items():
        counts = [done for f, done, _ in reports if f == filename]
        assert len(counts) >= 4, counts  # throttled to 1 MiB / 0.1 s, plus the final report
        assert counts == sorted(counts) and counts[-1] == len(payload)
        assert {total for f, _, total in reports if f == filename} == {len(payload)}
    assert [f for f, _, _ in reports][-1] == spec.mmproj_file  # files in order: model, then projector
    # Already in the cache: nothing is fetched, and each file is reported complete once.
    reports.clear()
    download.pull(NAME, endpoint=fake_hub.url, progress=False, on_progress=lambda *r: reports.append(r))
    assert reports == [(f, len(b), len(b)) for f, b in data.items()]


def test_a_set_cancel_event_stops_the_pull_and_keeps_the_bytes(hf_env, fake_hub):  # noqa: F811
    import threading

    import pytest

    from vreason_local.errors import UserError

    spec = registry.get_spec(NAME)
    data = fake_hub.add_spec(spec, size=3_500_000)
    cancel = threading.Event()

    def stop_after_first_report(filename: str, done: int, total: int | None) -> None:
        cancel.set()

    with pytest.raises(UserError, match=r"^download cancelled; run it again to continue \(kept [\d.]+ [kM]B\)$"):
        download.pull(NAME, endpoint=fake_hub.url, progress=False, on_progress=stop_after_first_report, cancel=cancel)
    [kept] = [p.stat().st_size for p in hf_env.rglob("*.incomplete")]
    assert 0 < kept < len(data[spec.model_file])
    r = download.pull(NAME, endpoint=fake_hub.url, progress=False)  # continues from the kept bytes
    assert r.model_path.read_bytes() == data[spec.model_file]
    assert fake_hub.seen("GET", spec.model_file)[-1] == f"bytes={kept}-"


async def open_model_screen(pilot) -> ModelScreen:
    await pilot.press("ctrl+l")
    await until(pilot, lambda: isinstance(pilot.app.screen, ModelScreen) and pilot.app.screen.query(".download"))
    return pilot.app.screen


def download_button(screen: ModelScreen, name: str):
    return next(b for b in screen.query(".download") if b.name == name)


async def test_the_model_screen_downloads_a_registry_model_with_progress(
    options,  # noqa: F811
    store,  # noqa: F811
    hf_env,  # noqa: F811
    fake_hub,  # noqa: F811
    monkeypatch,
):
    spec = registry.get_spec(NAME)
    data = fake_hub.add_spec(spec, size=2_500_000)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    chosen: list[ModelChoice | None] = []
    app = make_app(options, store)
    async with app.run_test(size=(100, 50)) as pilot:
        monkeypatch.setattr(app, "_model_chosen", chosen.append)  # record the choice; loading it is not this test
        screen = await open_model_screen(pilot)
        registry_list = screen.query_one("#registry", OptionList)
        assert registry_list.get_option(NAME).disabled
        download_button(screen, NAME).press()
        await until(
            pilot,
            lambda: (
                screen.downloading is None
                and not registry_list.get_option(NAME).disabled
                and not [b for b in screen.query(".download") if b.name == NAME]
            ),  # its row removed (async)
        )
        bar = screen.query_one("#download-bar", ProgressBar)
        assert bar.total == bar.progress == len(data[spec.mmproj_file])
        assert "downloaded" in str(screen.query_one("#download-status", Static).content)
        assert "downloaded" in str(registry_list.get_option(NAME).prompt)
        for filename, payload in data.items():
            [path] = hf_env.rglob(f"snapshots/*/{filename}")
            assert path.read_bytes() == payload
        registry_list.highlighted = registry_list.get_option_index(NAME)
        registry_list.focus()
        await pilot.press("enter")
        await until(pilot, lambda: chosen)
        assert chosen == [ModelChoice(NAME)]
    app.close_engine()


async def test_a_failing_download_shows_one_line_and_the_screen_stays_usable(
    options,  # noqa: F811
    store,  # noqa: F811
    hf_env,  # noqa: F811
    fake_hub,  # noqa: F811
    monkeypatch,
):
    spec = registry.get_spec(NAME)
    fake_hub.add_spec(spec, skip=(spec.model_file,))  # the model file answers 404
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    app = make_app(options, store)
    async with app.run_test(size=(100, 50)) as pilot:
        screen = await open_model_screen(pilot)
        download_button(screen, NAME).press()
        status = screen.query_one("#download-status", Static)
        await until(pilot, lambda: screen.downloading is None and "cannot download" in str(status.content))
        text = str(status.content)
        assert "\n" not in text and spec.model_file in text and "404" in text
        assert screen.query_one("#registry", OptionList).get_option(NAME).disabled
        assert not download_button(screen, NAME).disabled  # can try again
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        download_button(screen, NAME).press()
        await until(pilot, lambda: screen.downloading is None and "offline mode" in str(status.content))
        await pilot.press("escape")  # no download running: Esc closes the screen, the app goes on
        await until(pilot, lambda: not isinstance(app.screen, ModelScreen))
        assert app.is_running
    app.close_engine()


async def test_esc_stops_a_download_and_keeps_its_bytes(options, store, hf_env, fake_hub, monkeypatch):  # noqa: F811
    spec = registry.get_spec(NAME)
    data = fake_hub.add_spec(spec, size=3_000_000)
    fake_hub.cut_at[spec.model_file] = 1_500_000  # the server stalls half way: the download is in flight
    monkeypatch.setattr(download, "_RETRY_WAIT_S", 0.5)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    app = make_app(options, store)
    async with app.run_test(size=(100, 50)) as pilot:
        screen = await open_model_screen(pilot)
        download_button(screen, NAME).press()
        bar = screen.query_one("#download-bar", ProgressBar)
        await until(pilot, lambda: (bar.progress or 0) > 0)
        await pilot.press("escape")
        status = screen.query_one("#download-status", Static)
        await until(pilot, lambda: screen.downloading is None)
        assert "download cancelled; run it again to continue (kept" in str(status.content)
        assert isinstance(app.screen, ModelScreen)  # Esc stopped the download, not the screen
        # what had arrived when Esc took effect (a chunk boundary at or before the stall) is kept, intact
        [kept] = list(hf_env.rglob("*.incomplete"))
        assert 0 < kept.stat().st_size <= 1_500_000
        assert kept.read_bytes() == data[spec.model_file][: kept.stat().st_size]
    app.close_engine()
