"""The process's lock store: built from the settings, given in code, or registered in zope.component.

This module sits above ``config`` (settings only) and ``backends`` (the
stores), so neither of them imports upwards: the locks ask this module for
the store, and ``configure``/``reset`` here drop the store built from the
old settings.
"""

from __future__ import annotations

import threading

from . import config
from .backends.base import Backend
from .backends.fallback import FallbackBackend
from .backends.file import FileBackend
from .backends.memcached import MemcachedBackend
from .config import Settings, get_settings

_lock = threading.Lock()
#: What ``get_backend`` returns, cached: locks read it on every acquisition.
_backend: Backend | None = None
#: The store built from the settings (this module owns and closes it).
_own: Backend | None = None
#: A store given with ``set_backend``.
_pinned: Backend | None = None
#: Bumped whenever the cache is dropped, so a lookup that raced with a change is not cached.
_generation = 0


def make_backend(settings: Settings, create: bool = True) -> Backend:
    """Build the ILockBackend the settings ask for.

    ``create=False`` (for inspection: the ``memcachedlock`` command) never
    makes the lock directory: a missing one holds no lock.
    """
    if settings.backend == "memcached":
        return MemcachedBackend.from_settings(settings)
    if settings.backend == "file":
        return FileBackend.from_settings(settings, create)
    return FallbackBackend.from_settings(settings, create)


def configure(**changes: object) -> Settings:
    """Set settings in code (tests use this); unnamed ones keep their values.

    ``servers`` may be a string in ``MEMCACHEDLOCK_SERVERS`` form.  A value
    is checked as its environment variable would be; None or blank text is a
    setting not given (see :mod:`.config`).  The lock store is rebuilt on its
    next use; locks held now stay with their store.
    A store given with ``set_backend`` is dropped.
    """
    global _own, _pinned
    new = config.replace_settings(**changes)
    with _lock:
        _own = _pinned = None
        _forget()
    return new


def reset() -> None:
    """Forget settings and the lock store: the next use reads the environment again.

    The old store's idle connections are closed; leases still held through it
    keep working (its clients reconnect on demand).  A registered ILockBackend
    utility is not this module's to close.
    """
    global _own, _pinned
    config.forget_settings()
    with _lock:
        old, _own, _pinned = _own, None, None
        _forget()
    if old is not None:
        old.close()


def _forget() -> None:
    """Drop the cached store (caller holds ``_lock``)."""
    global _backend, _generation
    _backend = None
    _generation += 1


def forget_backend() -> None:
    """Look the store up again on its next use (a utility was registered or unregistered)."""
    with _lock:
        _forget()


def get_backend() -> Backend:
    """The process's lock store (an ILockBackend).

    In order: a store given with ``set_backend``; the ILockBackend utility
    registered in zope.component's global registry (ZCML's
    ``<memcachedlock:store>`` or ``<utility>``); the store built once from the
    settings (the ``MEMCACHEDLOCK_*`` environment).  The answer is cached:
    (un)registering an ILockBackend utility drops the cache
    (:mod:`.component`), so an acquisition costs no registry lookup.
    """
    global _backend, _own
    backend = _backend
    if backend is not None:
        return backend
    from .component import registered_backend

    generation = _generation
    registered = registered_backend(forget_backend)
    # The registered store, else the settings to build one from (read before taking ``_lock``).
    source = registered if registered is not None else get_settings()
    with _lock:
        if _backend is not None:
            return _backend
        if _pinned is not None:
            backend = _pinned
        elif not isinstance(source, Settings):
            backend = source
        else:
            if _own is None:
                _own = make_backend(source)
            backend = _own
        if generation == _generation:
            _backend = backend
        return backend


def set_backend(backend: Backend) -> None:
    """Use ``backend`` as the process's lock store until ``reset()`` or ``configure()`` (tests)."""
    global _pinned
    with _lock:
        _pinned = backend
        _forget()
