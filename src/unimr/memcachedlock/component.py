"""The lock store registered as a zope.component utility providing ILockBackend.

A site chooses its lock store in ZCML (``<memcachedlock:store .../>`` or a
plain ``<utility provides="unimr.memcachedlock.interfaces.ILockBackend"
.../>``, overridable in ``overrides.zcml``).  The locks look the store up
through :func:`.registry.get_backend`, which caches the answer because every
acquisition asks for it; this module tells the cache when an ILockBackend
utility is registered or unregistered (zope.interface's registration events,
delivered through ``zope.event``) and when ``zope.testing.cleanup`` wipes
the registry without events.

Only the global registry counts: the lock store belongs to the process, not
to a Plone site, so a persistent (local) registration is not consulted.

zope.component is imported here, lazily, the first time the store is looked
up: the core keeps working where it is not installed (the environment's
store is used then).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from zope.interface.interfaces import RegistrationEvent
from zope.interface.registry import UtilityRegistration

from .backends.base import Backend
from .interfaces import ILockBackend

_guard = threading.Lock()
_cleanup_hooked = False
#: Called when the registered store may have changed (the registry's ``forget_backend``).
_on_change: Callable[[], None] | None = None


def registered_backend(on_change: Callable[[], None]) -> Backend | None:
    """The ILockBackend utility of the global registry, or None (also without zope.component).

    ``on_change`` is called whenever an ILockBackend utility is registered or
    unregistered, or the registry is cleaned up, so the caller can drop its cache.
    """
    try:
        from zope.component import getGlobalSiteManager
    except ImportError:
        return None
    _watch(on_change)
    registered: Backend | None = getGlobalSiteManager().queryUtility(ILockBackend)
    return registered


def _forget() -> None:
    if _on_change is not None:
        _on_change()


def _watch(on_change: Callable[[], None]) -> None:
    """Subscribe to registration events (again, if a test harness cleared the subscribers)."""
    global _cleanup_hooked, _on_change
    import zope.event

    with _guard:
        _on_change = on_change
        if _on_event not in zope.event.subscribers:
            zope.event.subscribers.append(_on_event)
        if not _cleanup_hooked:
            _cleanup_hooked = True
            try:
                from zope.testing.cleanup import addCleanUp
            except ImportError:  # a test helper; a site without it has no cleanUp to follow
                pass
            else:
                addCleanUp(_forget)


def _on_event(event: object) -> None:
    """Drop the cached store when an ILockBackend utility comes or goes."""
    if isinstance(event, RegistrationEvent):
        registration = event.object
        if isinstance(registration, UtilityRegistration) and registration.provided.isOrExtends(ILockBackend):
            _forget()
