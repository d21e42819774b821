"""Keys for the ZCatalog patch in ``catalog.zcml``.

``catalog_object`` and ``uncatalog_object`` of one catalog share one zlock,
named ``Products.ZCatalog.ZCatalog.ZCatalog:<physical path>``: every ZEO
client that writes to the same catalog (its BTrees, ``_length`` counters and
metadata) takes turns, while different catalogs stay independent.
"""

from __future__ import annotations

from typing import Any, Callable

#: The lock name shared by the patched catalog methods.
LOCK_NAME = "Products.ZCatalog.ZCatalog.ZCatalog"


def catalog_key(fun: Callable, catalog: Any, *args: Any, **kw: Any) -> str:
    """The catalog's physical path, e.g. ``/plone/portal_catalog``."""
    return "/".join(catalog.getPhysicalPath())
