"""The attachment cache (SPEC §8): a memory LRU, then a folder the worker processes of a host share.

Contract of `AttachmentCache.get_or_fetch(key, fetch)`: within a process, `fetch` runs at
most once per key at a time and concurrent callers share its outcome, error included
(single flight); with the disk tier on, processes sharing the folder also fetch a key one
at a time (an `flock` on a per-key lock file), and whoever waited reads the folder again
before fetching. Only what `fetch` returned is stored; failures are never cached.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from django.conf import settings

from mailproxy import safehttp

logger = logging.getLogger(__name__)

MB = 1024 * 1024
# Leftovers of a crashed writer, and lock files of keys nobody fetches any more.
STALE_SECONDS = 3600
LOCK_POLL_SECONDS = 0.05
Clock = Callable[[], float]


class MemoryCache:
    """A byte-bounded LRU whose entries carry their own expiry time; thread-safe."""

    def __init__(self, *, max_bytes: int, clock: Clock = time.time) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def get(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self._clock() >= entry[1]:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: str, content: bytes, *, expires_at: float) -> None:
        if len(content) > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._drop(key)
            if self._size + len(content) > self.max_bytes:
                now = self._clock()
                for expired in [name for name, (_, until) in self._entries.items() if now >= until]:
                    self._drop(expired)
            while self._size + len(content) > self.max_bytes:
                self._drop(next(iter(self._entries)))
            self._entries[key] = (content, expires_at)
            self._size += len(content)

    def _drop(self, key: str) -> None:
        content, _ = self._entries.pop(key)
        self._size -= len(content)


class DiskCache:
    """Files named by the sha256 of their key, bounded in bytes (oldest first), expiring by mtime.

    Several processes may share the folder: a file appears whole (written aside in the same
    folder, then `os.replace`). Accepted races: concurrent writers can overshoot the size
    bound until the next write evicts, and an entry removed under a reader costs a fetch.
    """

    def __init__(self, *, directory: Path, max_bytes: int, ttl: float, clock: Clock = time.time) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock

    def path(self, key: str) -> Path:
        return self.directory / hashlib.sha256(key.encode()).hexdigest()

    def get(self, key: str) -> tuple[bytes, float] | None:
        """The content and the time it expires, or None."""
        path = self.path(key)
        try:
            with path.open("rb") as file:
                info = os.fstat(file.fileno())
                expires_at = info.st_mtime + self.ttl
                if self._clock() < expires_at:
                    return file.read(), expires_at
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("attachment cache read failed dir=%s error=%s", self.directory, exc)
            return None
        with contextlib.suppress(OSError):
            # Only the expired file: another process may have put a fresh one in its place.
            if os.stat(path).st_ino == info.st_ino:
                path.unlink()
        return None

    def put(self, key: str, content: bytes) -> None:
        if len(content) > self.max_bytes:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._make_room(len(content))
            fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(content)
                    file.flush()
                    # A renamed file whose data never reached the disk would be served after a crash.
                    os.fsync(file.fileno())
                now = self._clock()
                os.utime(temp, (now, now))
                os.replace(temp, self.path(key))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        except OSError as exc:
            logger.warning("attachment cache write failed dir=%s error=%s", self.directory, exc)

    @contextlib.contextmanager
    def locked(self, key: str, *, wait: float) -> Iterator[None]:
        """Hold the key's lock file, so one process of the host fetches it at a time.

        After `wait` seconds, or on a folder that cannot hold the lock, the caller goes ahead
        unlocked: a fetch twice is better than a worker stuck behind another's hung fetch.
        """
        fd: int | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path(key).with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            if _flock(fd, wait=wait):
                os.utime(fd)  # a lock in use is never swept as stale
            else:
                logger.warning("attachment cache lock wait expired dir=%s after=%ss", self.directory, wait)
        except OSError as exc:
            logger.warning("attachment cache lock failed dir=%s error=%s", self.directory, exc)
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # releases the flock

    def _make_room(self, incoming: int) -> None:
        now = self._clock()
        entries: list[tuple[float, int, str]] = []
        total = 0
        with os.scandir(self.directory) as listing:
            for entry in listing:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                age = now - info.st_mtime
                if _is_entry(entry.name):
                    if age >= self.ttl:
                        _remove(entry.path)
                        continue
                    entries.append((info.st_mtime, info.st_size, entry.path))
                    total += info.st_size
                elif (entry.name.startswith(".tmp-") or entry.name.endswith(".lock")) and age >= max(
                        self.ttl, STALE_SECONDS):
                    _remove(entry.path)
        for _, size, path in sorted(entries):
            if total + incoming <= self.max_bytes:
                break
            _remove(path)
            total -= size


def _flock(fd: int, *, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(LOCK_POLL_SECONDS)
        else:
            return True


def _is_entry(name: str) -> bool:
    return len(name) == 64 and all(char in "0123456789abcdef" for char in name)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class _Flight:
    """One fetch in progress, whose outcome every caller of the key gets."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._content = b""
        self._error: BaseException | None = None

    def succeed(self, content: bytes) -> None:
        self._content = content
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def outcome(self) -> bytes:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._content


class AttachmentCache:
    """Memory, then disk, then `fetch`; a tier with a zero size, or a zero TTL, is off."""

    def __init__(self, *, memory_bytes: int, directory: Path | None, disk_bytes: int, ttl: float,
                 lock_wait: float = 60.0, clock: Clock = time.time) -> None:
        self.ttl = ttl
        self.lock_wait = lock_wait
        self._clock = clock
        self.memory = MemoryCache(max_bytes=memory_bytes, clock=clock) if memory_bytes > 0 and ttl > 0 else None
        self.disk = (DiskCache(directory=directory, max_bytes=disk_bytes, ttl=ttl, clock=clock)
                     if directory is not None and disk_bytes > 0 and ttl > 0 else None)
        self._flights: dict[str, _Flight] = {}
        self._mutex = threading.Lock()

    @classmethod
    def from_settings(cls) -> AttachmentCache:
        directory = settings.GMP_CACHE_DIR
        return cls(memory_bytes=settings.GMP_CACHE_MEMORY_MB * MB, disk_bytes=settings.GMP_CACHE_DISK_MB * MB,
                   directory=Path(directory).expanduser() if directory else None, ttl=settings.GMP_CACHE_TTL,
                   # Another process's fetch normally ends within the timeout per exchange, redirects included.
                   lock_wait=settings.GMP_FETCH_TIMEOUT * (safehttp.MAX_REDIRECTS + 1))

    def get(self, key: str) -> bytes | None:
        """The cached content: from memory, else from disk (then kept in memory as well)."""
        if self.memory is not None and (content := self.memory.get(key)) is not None:
            return content
        if self.disk is None or (hit := self.disk.get(key)) is None:
            return None
        if self.memory is not None:
            self.memory.put(key, hit[0], expires_at=hit[1])
        return hit[0]

    def get_or_fetch(self, key: str, fetch: Callable[[], bytes]) -> bytes:
        if self.memory is not None and (content := self.memory.get(key)) is not None:
            return content
        with self._mutex:
            flight = self._flights.get(key)
            leading = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leading:
            return flight.outcome()
        try:
            content = self._load_or_fetch(key, fetch)
        except BaseException as exc:
            flight.fail(exc)
            raise
        finally:
            with self._mutex:
                del self._flights[key]
        flight.succeed(content)
        return content

    def _load_or_fetch(self, key: str, fetch: Callable[[], bytes]) -> bytes:
        if (content := self.get(key)) is not None:
            return content
        if self.disk is None:
            return self._store(key, fetch())
        with self.disk.locked(key, wait=self.lock_wait):
            # Whoever held the lock may have just fetched it.
            if (content := self.get(key)) is not None:
                return content
            return self._store(key, fetch())

    def _store(self, key: str, content: bytes) -> bytes:
        if self.disk is not None:
            self.disk.put(key, content)
        if self.memory is not None:
            self.memory.put(key, content, expires_at=self._clock() + self.ttl)
        return content


_default: tuple[tuple[object, ...], AttachmentCache] | None = None
_default_lock = threading.Lock()


def _forget_after_fork() -> None:
    # A lock held by another thread of the parent at fork time would never be released here.
    global _default, _default_lock
    _default, _default_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def default_cache() -> AttachmentCache:
    """This process's cache for the current settings: a new one after a fork or a settings change."""
    global _default
    config = (os.getpid(), settings.GMP_CACHE_MEMORY_MB, settings.GMP_CACHE_DIR, settings.GMP_CACHE_DISK_MB,
              settings.GMP_CACHE_TTL)
    with _default_lock:
        if _default is None or _default[0] != config:
            _default = (config, AttachmentCache.from_settings())
        return _default[1]
