"""What the tests ask of the package's inner state, and the package itself never needs to know."""

from __future__ import annotations

import time
from xml.sax.saxutils import quoteattr

from unimr.memcachedlock import config, waiting
from unimr.memcachedlock.zodb import reservations


def retry_will_lock() -> bool:
    """True if this thread's next transaction will take a zlock at begin (a conflict mark or a reservation)."""
    keeper = reservations._state.keeper
    now = time.monotonic()
    return any(mark.until > now for mark in keeper.marks.values()) or bool(keeper.reservations)


def waiting_keys() -> int:
    """How many keys threads of this process wait for now."""
    with waiting._states_lock:
        return sum(1 for state in waiting._states.values() if state.waited_for())


def is_locked(cls: type, method: str) -> bool:
    """True if ``cls.<method>`` is locked by the ZCML patching now."""
    from unimr.memcachedlock.zope import patch

    return any(locked.cls is cls and locked.method == method for locked in patch.patches())


def store_directive_settings(attributes: dict[str, str]) -> config.Settings:
    """The settings ``<memcachedlock:store name="value" .../>`` registers its store utility with."""
    from zope.component import getGlobalSiteManager
    from zope.configuration import xmlconfig
    from zope.testing.cleanup import cleanUp

    from unimr.memcachedlock.interfaces import ILockBackend

    given = " ".join("%s=%s" % (name, quoteattr(value)) for name, value in attributes.items())
    cleanUp()
    try:
        xmlconfig.string(
            '<configure xmlns="http://namespaces.zope.org/zope" '
            'xmlns:memcachedlock="http://namespaces.zope.org/memcachedlock">'
            '<include package="unimr.memcachedlock" file="meta.zcml" />'
            '<memcachedlock:store %s /></configure>' % given)
        registration = next(r for r in getGlobalSiteManager().registeredUtilities() if r.provided is ILockBackend)
        settings: config.Settings = registration.factory.settings
        return settings
    finally:
        cleanUp()
