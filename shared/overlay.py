"""The registry a gateway runs with, built-in defaults plus the configured overlay, kept current.

Prices and aliases change more often than gateways restart, so a `RegistrySource` re-reads the overlay
while the gateway runs: when the file changes (polled by mtime and size), every `registry_refresh`
seconds for a `registry_url`, and on SIGHUP. A reload that fails (a typo mid-edit, the URL down) keeps
the registry that was last loaded, logs why with the source and key, and shows up in `status`, so a bad
edit never takes models away from a running gateway; fixing the file recovers on the next poll.

Swapping is safe for requests in flight because a `Registry` is immutable: a reload builds a new one
and rebinds `current`, it never changes the old one. A request reads `current` once, when it starts,
and keeps using that object to resolve, route and bill, so it sees one registry from start to end
even if a reload lands half-way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import msgspec

from .config import Settings
from .registry import Registry, RegistryError, fetch_overlay, load_registry, read_overlay_file

logger = logging.getLogger("reactor.registry")

# How often the overlay file is checked for changes, in seconds.
DEFAULT_POLL_INTERVAL = 2.0
# How often a `registry_url` overlay is fetched again when the settings do not say, in seconds.
DEFAULT_REFRESH = 300.0


class RegistryStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Where the running registry came from and how its reloads went, for health checks.

    Parameters:
        source: the overlay file path, the `registry_url`, or "<defaults>" when neither is set.
        loaded_at: unix seconds when the registry in use was loaded; None before the first load.
        version: 1 for the registry loaded at start-up, one more for each reload that changed it.
        last_error: why the latest load or reload failed, naming the source and key; None once one
            succeeds.
        last_error_at: unix seconds of that failure; None with `last_error`.
    """

    source: str
    loaded_at: float | None = None
    version: int = 0
    last_error: str | None = None
    last_error_at: float | None = None


class RegistrySource:
    """The registry for `settings`, reloaded from its overlay while the gateway runs.

    Every registry it hands out is restricted to the providers `settings` enables, with routes through
    providers lacking credentials moved last (`Registry.restricted_to`).

    Parameters:
        settings: the gateway settings; `registry_overlay` or `registry_url` say what to watch.
        poll_interval: seconds between checks of the overlay file.
        refresh_interval: seconds between fetches of `registry_url`; `registry_refresh` from the
            settings when None, else `DEFAULT_REFRESH`.
    """

    def __init__(self, settings: Settings, *, poll_interval: float = DEFAULT_POLL_INTERVAL,
                 refresh_interval: float | None = None) -> None:
        self._settings = settings
        self._poll_interval = poll_interval
        if refresh_interval is None:
            refresh_interval = float(getattr(settings, "registry_refresh", DEFAULT_REFRESH))
        self._refresh_interval = refresh_interval
        if settings.registry_overlay is not None:
            source = str(settings.registry_overlay)
        else:
            source = settings.registry_url or "<defaults>"
        self._status = RegistryStatus(source=source)
        self._registry: Registry | None = None
        self._text: str | None = None  # the overlay text `_registry` was built from
        self._file_seen: tuple[int, int, int] | None = None
        self._fetched_at = 0.0  # time.monotonic() of the last fetch of registry_url
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()
        self._sighup_loop: asyncio.AbstractEventLoop | None = None

    @property
    def current(self) -> Registry:
        """The registry last loaded successfully.

        Read it once per request and keep the object: a reload replaces it here but never changes it.

        :raises RuntimeError: before `load()` has succeeded.
        """
        if self._registry is None:
            raise RuntimeError("RegistrySource.load() has not succeeded yet")
        return self._registry

    @property
    def status(self) -> RegistryStatus:
        """Where `current` came from, its version, and the latest failure if the latest attempt failed."""
        return self._status

    async def load(self) -> Registry:
        """Load the registry at start-up and return it.

        A `registry_url` that cannot be fetched falls back to the built-in registry when the settings
        mark it optional (recorded in `status`); anything else wrong is raised.

        :raises RegistryError: the overlay is unreadable or invalid.
        """
        async with self._lock:
            if self._settings.registry_overlay is not None:
                self._file_seen = _file_signature(self._settings.registry_overlay)
            try:
                text = await self._read()
            except RegistryError as exc:
                if self._settings.registry_overlay is not None or not self._settings.registry_optional:
                    self._failed(exc)
                    raise
                logger.warning("%s; continuing with the built-in registry (registry_optional = true)", exc)
                self._install(self._build(None))
                self._failed(exc)
                return self.current
            try:
                registry = self._build(text)
            except RegistryError as exc:
                self._failed(exc)
                raise
            self._install(registry, text)
            return registry

    async def reload(self) -> bool:
        """Read the overlay again and, if it is valid, make it `current`.

        Returns True when `current` now reflects the source (unchanged text keeps the same object),
        False when it could not be read or is invalid: then `current` stays as it was, the reason is
        logged and kept in `status`. Before `load()` has succeeded, this is `load()` that does not raise.
        """
        if self._registry is None:
            try:
                await self.load()
            except RegistryError:
                return False
            return True
        async with self._lock:
            try:
                text = await self._read()
                if text == self._text:
                    self._status = msgspec.structs.replace(self._status, last_error=None, last_error_at=None)
                    return True
                registry = self._build(text)
            except Exception as exc:  # noqa: BLE001 - a reload must never take the last good registry away
                self._failed(exc)
                log = logger.warning if isinstance(exc, RegistryError) else logger.exception
                log("registry reload failed, keeping version %d: %s", self._status.version, self._status.last_error)
                return False
            self._install(registry, text)
            logger.info("registry reloaded from %s: version %d, %d models, %d aliases", self._status.source,
                        self._status.version, len(registry.models), len(registry.aliases))
            return True

    async def watch(self) -> None:
        """Reload whenever the source changes, until cancelled; run it as a task after `load()`.

        The overlay file is checked every `poll_interval` seconds (a change of mtime, size or inode,
        as an editor's save-and-rename makes, reloads it); a `registry_url` is fetched again
        `refresh_interval` seconds after the last fetch, failed or not, so a server that is down is
        not hammered. Returns at once when there is no overlay to watch.
        """
        overlay, url = self._settings.registry_overlay, self._settings.registry_url
        if overlay is None and not url:
            return
        while True:
            if overlay is not None:
                await asyncio.sleep(self._poll_interval)
            else:
                await asyncio.sleep(max(0.0, self._fetched_at + self._refresh_interval - time.monotonic()))
            try:
                if overlay is not None:
                    seen = _file_signature(overlay)
                    if seen != self._file_seen:
                        self._file_seen = seen
                        await self.reload()
                elif time.monotonic() - self._fetched_at >= self._refresh_interval:
                    await self.reload()
            except Exception:  # noqa: BLE001 - the watcher outlives any one bad check
                logger.exception("registry watch of %s failed; trying again", self._status.source)

    def install_sighup(self, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Make SIGHUP reload the registry, on `loop` (the running loop when None).

        Returns False where the platform has no SIGHUP or the loop cannot take signal handlers.
        """
        sighup = getattr(signal, "SIGHUP", None)
        loop = loop or asyncio.get_running_loop()
        if sighup is None:
            return False
        self._sighup_loop = loop
        try:
            loop.add_signal_handler(sighup, self._on_sighup)
        except (NotImplementedError, RuntimeError, ValueError):
            self._sighup_loop = None
            return False
        return True

    def remove_sighup(self) -> None:
        """Undo `install_sighup`."""
        if self._sighup_loop is not None:
            self._sighup_loop.remove_signal_handler(signal.SIGHUP)
            self._sighup_loop = None

    # --- internals --------------------------------------------------------------------------------

    async def _read(self) -> str | None:
        """The overlay text, or None when there is no overlay."""
        settings = self._settings
        if settings.registry_overlay is not None:
            return read_overlay_file(settings.registry_overlay)
        if settings.registry_url:
            self._fetched_at = time.monotonic()
            return await fetch_overlay(settings.registry_url, settings.registry_timeout)
        return None

    def _build(self, text: str | None) -> Registry:
        registry = load_registry(text, self._status.source)
        enabled = self._settings.enabled_providers
        return registry.restricted_to(enabled, [name for name, p in enabled.items() if p.missing_credentials()])

    def _install(self, registry: Registry, text: str | None = None) -> None:
        self._registry, self._text = registry, text
        self._status = msgspec.structs.replace(self._status, loaded_at=time.time(), version=self._status.version + 1,
                                               last_error=None, last_error_at=None)

    def _failed(self, exc: Exception) -> None:
        message = str(exc) if isinstance(exc, RegistryError) else f"{self._status.source}: {type(exc).__name__}: {exc}"
        self._status = msgspec.structs.replace(self._status, last_error=message, last_error_at=time.time())

    def _on_sighup(self) -> None:
        assert self._sighup_loop is not None
        task = self._sighup_loop.create_task(self.reload())
        # Keep a reference until it is done: the loop holds tasks only weakly.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _file_signature(path: os.PathLike[str] | str) -> tuple[int, int, int] | None:
    """What changes when the file is saved: mtime, size and inode; None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class FixedRegistry:
    """A registry that never reloads, with :class:`RegistrySource`'s reading side (tests, tools)."""

    def __init__(self, registry: Registry) -> None:
        self.current = registry
        self.status = RegistryStatus(source="<given>", loaded_at=time.time(), version=1)

    async def load(self) -> Registry:
        return self.current

    async def watch(self) -> None:
        return None

    def install_sighup(self, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        return False

    def remove_sighup(self) -> None:
        return None


async def registry_for(settings: Settings) -> Registry:
    """The merged registry, restricted to the providers this gateway has enabled, loaded once.

    For a registry that follows changes to its overlay, keep a `RegistrySource` instead.

    :raises RegistryError: the overlay is unreadable or invalid (a failed ``registry_url`` fetch
        only when the config does not mark it optional).
    """
    return await RegistrySource(settings).load()
