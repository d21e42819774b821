"""Zope integration: the ``memcachedlock:lock`` ZCML directive, the opt-in
ZCatalog patch and the publisher's immediate retry after ``LockBusy``.

Nothing in the core package imports this subpackage: it needs Zope's
``zope.configuration`` and ``zope.schema`` (and ZPublisher for the retry
patch).  A site turns catalog locking on by including ``catalog.zcml`` (or
the top-level ``configure.zcml`` of the source tree); the package's own
``configure.zcml`` patches nothing and is safe to be auto-included.
"""
