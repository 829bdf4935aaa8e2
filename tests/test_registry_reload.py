"""A running gateway's registry follows its overlay: file edits, `registry_url` refreshes and SIGHUP."""

from __future__ import annotations

import asyncio
import http.server
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.config import Settings, load_settings
from shared.overlay import RegistrySource, RegistryStatus, registry_for
from shared.registry import RegistryError

MODEL = "gpt-4o-mini"


def overlay(price: float, *, alias: bool = False) -> str:
    text = f'[models."{MODEL}"]\ninput_price_per_mtok = {price}\n'
    if alias:
        text += '\n[aliases.reasoning/cheapest]\nstrategy = "cheapest"\ntargets = ["gpt-4o-mini", "claude-3-haiku"]\n'
    return text


def price(source: RegistrySource) -> float:
    return source.current.models[MODEL].input_price_per_mtok


def settings_for(tmp_path: Path, gateway: str) -> Settings:
    config = tmp_path / "reactor.toml"
    config.write_text(f"[gateway]\n{gateway}")
    return load_settings(config, env={})


@pytest.fixture
def overlay_file(tmp_path: Path) -> Path:
    path = tmp_path / "ai-models.toml"
    path.write_text(overlay(1.5))
    return path


@pytest.fixture
def file_settings(tmp_path: Path, overlay_file: Path) -> Settings:
    return settings_for(tmp_path, f'registry_overlay = "{overlay_file.name}"\n')


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def watching(source: RegistrySource) -> asyncio.Task[None]:
    await source.load()
    return asyncio.create_task(source.watch())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- the overlay file -----------------------------------------------------------------------------


def test_file_change_is_picked_up_within_a_few_seconds(file_settings: Settings, overlay_file: Path) -> None:
    source = RegistrySource(file_settings)  # the default poll interval

    async def run() -> None:
        task = await watching(source)
        try:
            assert price(source) == 1.5
            assert source.status.version == 1
            overlay_file.write_text(overlay(12.25, alias=True))
            started = time.monotonic()
            await eventually(lambda: price(source) == 12.25, timeout=6)
            assert time.monotonic() - started < 5
        finally:
            await stop(task)

    asyncio.run(run())
    assert source.status.version == 2
    assert source.current.lookup("reasoning/cheapest")[0] is not None


def test_registry_taken_before_a_reload_is_unchanged_after_it(file_settings: Settings, overlay_file: Path) -> None:
    source = RegistrySource(file_settings)

    async def run() -> None:
        await source.load()
        before = source.current
        models, aliases, model = dict(before.models), dict(before.aliases), before.models[MODEL]
        overlay_file.write_text(overlay(7.0, alias=True))
        assert await source.reload()

        assert source.current is not before
        assert price(source) == 7.0
        assert dict(before.models) == models and dict(before.aliases) == aliases == {}
        assert before.models[MODEL] is model and model.input_price_per_mtok == 1.5
        assert before.lookup("reasoning/cheapest") == (None, [])

    asyncio.run(run())


def test_current_is_restricted_like_registry_for(file_settings: Settings) -> None:
    source = RegistrySource(file_settings)
    registry = asyncio.run(source.load())

    assert source.current is registry
    once = asyncio.run(registry_for(file_settings))
    assert list(once.models) == list(registry.models)
    assert once.models[MODEL] == registry.models[MODEL]
    # Only OpenRouter is enabled: Foundry's and Bedrock's routes are gone.
    assert {route.provider for model in registry.models.values() for route in model.routes} == {"openrouter"}


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (f'[models."{MODEL}"]\ninput_price_per_mtok = "cheap"\n', f'models."{MODEL}".input_price_per_mtok: expected a number'),
        ("[aliases.reasoning/cheapest]\nstrategy = \"first\"\ntargets = [\"gpt-4o-mni\"]\n",
         'aliases."reasoning/cheapest".targets[0]: unknown model'),
        ("[aliases.reasoning/cheapest\n", "invalid TOML"),
        (None, "cannot read registry overlay"),
    ],
)
def test_broken_overlay_keeps_the_last_good_registry(
    file_settings: Settings, overlay_file: Path, caplog: pytest.LogCaptureFixture, broken: str | None, expected: str
) -> None:
    source = RegistrySource(file_settings)

    async def run() -> None:
        good = await source.load()
        loaded_at = source.status.loaded_at
        if broken is None:
            overlay_file.unlink()
        else:
            overlay_file.write_text(broken)
        with caplog.at_level(logging.WARNING, logger="reactor.registry"):
            assert await source.reload() is False

        assert source.current is good and price(source) == 1.5
        status = source.status
        assert (status.version, status.loaded_at) == (1, loaded_at)
        assert status.last_error is not None and status.last_error.startswith(f"{overlay_file}: ")
        assert expected in status.last_error
        assert status.last_error_at is not None and status.last_error_at >= loaded_at
        assert any(expected in record.getMessage() and str(overlay_file) in record.getMessage()
                   for record in caplog.records)

    asyncio.run(run())


def test_watch_survives_a_broken_edit_and_recovers_when_fixed(file_settings: Settings, overlay_file: Path) -> None:
    source = RegistrySource(file_settings, poll_interval=0.05)

    async def run() -> None:
        task = await watching(source)
        try:
            good = source.current
            overlay_file.write_text(f'[models."{MODEL}"]\ninput_price_per_mtok = -3\n')
            await eventually(lambda: source.status.last_error is not None)
            assert source.current is good
            assert f'models."{MODEL}".input_price_per_mtok: expected a number >= 0' in source.status.last_error

            overlay_file.write_text(overlay(3.25))
            await eventually(lambda: price(source) == 3.25)
            assert source.status.last_error is None and source.status.last_error_at is None
            assert source.status.version == 2
        finally:
            await stop(task)

    asyncio.run(run())


def test_initial_load_raises_and_records_the_error(tmp_path: Path, overlay_file: Path) -> None:
    overlay_file.write_text("[aliases.a/b]\nstrategy = 1\n")
    source = RegistrySource(settings_for(tmp_path, f'registry_overlay = "{overlay_file}"\n'))

    with pytest.raises(RegistryError, match=r'aliases\."a/b"\.strategy: expected a string'):
        asyncio.run(source.load())
    assert source.status.version == 0 and source.status.last_error is not None
    with pytest.raises(RuntimeError):
        source.current


def test_reload_of_unchanged_text_keeps_the_same_registry(file_settings: Settings) -> None:
    source = RegistrySource(file_settings)

    async def run() -> None:
        registry = await source.load()
        assert await source.reload() is True
        assert source.current is registry and source.status.version == 1

    asyncio.run(run())


def test_defaults_alone_have_nothing_to_watch(tmp_path: Path) -> None:
    source = RegistrySource(settings_for(tmp_path, ""))

    async def run() -> None:
        await source.load()
        await asyncio.wait_for(source.watch(), timeout=1)

    asyncio.run(run())
    assert source.status == RegistryStatus(source="<defaults>", loaded_at=source.status.loaded_at, version=1)


# --- SIGHUP ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads(file_settings: Settings, overlay_file: Path) -> None:
    source = RegistrySource(file_settings)
    previous = signal.getsignal(signal.SIGHUP)

    async def run() -> None:
        await source.load()
        assert source.install_sighup()
        try:
            overlay_file.write_text(overlay(4.75))
            os.kill(os.getpid(), signal.SIGHUP)
            await eventually(lambda: price(source) == 4.75, timeout=5)
        finally:
            source.remove_sighup()

    try:
        asyncio.run(run())
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert source.status.version == 2


# --- registry_url ---------------------------------------------------------------------------------


class _Served:
    def __init__(self) -> None:
        self.body = overlay(1.5)
        self.status = 200
        self.requests = 0


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, _Served]]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    state = _Served()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests += 1
            body = state.body.encode()
            self.send_response(state.status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ai-models.toml", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)


def test_registry_url_is_refetched(tmp_path: Path, served: tuple[str, _Served]) -> None:
    url, state = served
    source = RegistrySource(settings_for(tmp_path, f'registry_url = "{url}"\nregistry_timeout = 2\n'),
                            refresh_interval=0.1)

    async def run() -> None:
        task = await watching(source)
        try:
            assert price(source) == 1.5 and source.status.source == url
            good = source.current
            state.status = 500
            await eventually(lambda: source.status.last_error is not None)
            assert source.current is good
            assert source.status.last_error.startswith(f"{url}: expected HTTP 200")

            state.status, state.body = 200, overlay(9.5, alias=True)
            await eventually(lambda: price(source) == 9.5)
            assert source.status.last_error is None
            assert source.current.lookup("reasoning/cheapest")[0] is not None
        finally:
            await stop(task)

    asyncio.run(run())
    assert state.requests >= 3


def test_optional_registry_url_starts_on_defaults_then_picks_it_up(tmp_path: Path, served: tuple[str, _Served]) -> None:
    url, state = served
    state.status = 503
    settings = settings_for(tmp_path, f'registry_url = "{url}"\nregistry_optional = true\nregistry_timeout = 2\n')
    source = RegistrySource(settings)

    async def run() -> None:
        await source.load()
        assert price(source) == 0.15  # the built-in price
        assert source.status.version == 1 and "expected HTTP 200" in (source.status.last_error or "")

        state.status = 200
        assert await source.reload()
        assert price(source) == 1.5 and source.status.version == 2 and source.status.last_error is None

    asyncio.run(run())
