"""Keys for the ZCatalog patch in ``catalog.zcml`` and the uid generator's lock in ``uidgenerator.zcml``.

``catalog_object`` and ``uncatalog_object`` of one catalog share one zlock,
named ``Products.ZCatalog.ZCatalog.ZCatalog:<physical path>``: every ZEO
client that writes to the same catalog (its BTrees, ``_length`` counters and
metadata) takes turns, while different catalogs stay independent.

The patch must never make a catalog method fail where the unpatched one
works.  A catalog whose acquisition chain does not lead to a physical path
(a parent without ``getPhysicalPath``: a tool built in code, a catalog
wrapped in a helper object, a test's fake parent) is keyed by what every
client shares instead, its database and oid; a catalog that is not stored
in a database at all is written unlocked (:class:`~unimr.memcachedlock.DontLock`),
with one warning per catalog class: no other client can write to it.  The
uid generator is keyed the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..errors import DontLock

logger = logging.getLogger(__name__)

#: The lock name shared by the patched catalog methods.
LOCK_NAME = "Products.ZCatalog.ZCatalog.ZCatalog"

_warned: set[type] = set()


def physical_path_key(fun: Callable[..., object], catalog: Any, *args: Any, **kw: Any) -> str:
    """The object's physical path, e.g. ``/plone/portal_catalog``, or ``oid:<database>:<oid>`` without one.

    Any persistent Zope object is keyed this way (``uidgenerator.zcml`` keys the uid generator by it).
    """
    try:
        return "/".join(catalog.getPhysicalPath())
    except (AttributeError, TypeError) as exc:
        reason = exc
    oid = getattr(catalog, "_p_oid", None)
    jar = getattr(catalog, "_p_jar", None)
    if oid is not None and jar is not None:
        return "oid:%s:%s" % (jar.db().database_name, oid.hex())
    kind = type(getattr(catalog, "aq_base", catalog))
    if kind not in _warned:
        _warned.add(kind)
        logger.warning("%s %s.%s: no physical path (%s) and not in a database: called unlocked, as no other "
                       "client can write to it", fun.__name__, kind.__module__, kind.__qualname__, reason)
    raise DontLock("a %s with no physical path, not stored: nothing to lock" % kind.__qualname__)


#: The catalog's key in catalog.zcml: its physical path.
catalog_key = physical_path_key
