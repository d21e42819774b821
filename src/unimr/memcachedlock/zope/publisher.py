"""Zope's publisher and zlock: retry at once after a reserved ``LockBusy``; lock early where it pays.

Zope's WSGI publisher retries a ``TransientError`` (every ConflictError) and
calls ``request.delay_retry()`` first, which sleeps a random 0-1 s, then 0-2 s
and 0-4 s: the back-off spreads clients that collided by chance.  The patched
``delay_retry`` looks at the exception being handled (``publish_module``
calls it inside its ``except TransientError:`` block) and skips the sleep
after a ``LockBusy`` whose lock zlock keeps reserved for this thread's retry:
sleeping would only hold the lock idle and could let the reservation lapse.

Every other exception keeps Zope's delay: a ``LockBusy`` raised because the
lock could not be had within the bounded wait (a long holder), and a
ConflictError after which policy ``on-conflict`` takes the lock when the
retry begins.  Skipping the sleep there was measured too: the retries were
no faster overall, and the clients that did not sleep kept more first
attempts running at once, so more of them conflicted (docs/zlock.rst).

:func:`lock_early` (an ``IPubStart`` subscriber, registered by
``catalog.zcml``) labels each request's transactions ``METHOD /path`` and
takes, right after the transaction began, the zlocks that requests of the
same label were retried at after changing objects
(:mod:`unimr.memcachedlock.zodb.early`): a Plone content add changes the uid
generator and the folder long before the catalog lock, so its waiters
redid all their work; now they wait before it.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

from ..zodb import LockBusy
from ..zodb import lock_early as lock_early_for

logger = logging.getLogger(__name__)



class Request(Protocol):
    """What this module reads of a Zope request (``ZPublisher.HTTPRequest.HTTPRequest``): its variables."""

    def get(self, key: str, default: object = None) -> object:
        """The request variable ``key`` (an environment variable such as PATH_INFO), or ``default``."""


_guard = threading.Lock()
#: Zope's own ``HTTPRequest.delay_retry`` while the patch is installed.
_original: Callable[[Request], None] | None = None


def retry_at_once(exc: BaseException | None) -> bool:
    """True if ``exc`` is a LockBusy whose lock is reserved for the retry: Zope's back-off is skipped."""
    return isinstance(exc, LockBusy) and exc.reserved


def warn_if_retries_end_first(where: str, conflicts: int) -> bool:
    """Warn (True) if Zope's ``max-conflict-retries`` ends a request before its try locked after ``conflicts``.

    Zope's startup sets ``HTTPRequest.retry_max_count`` from ``zope.conf``
    (3 unless configured) before the site's ZCML is loaded; 0 means it did
    not run (a script, a test), and nothing is said.
    """
    from ZPublisher.HTTPRequest import HTTPRequest

    retries = HTTPRequest.retry_max_count
    if 0 < retries < conflicts:
        logger.warning(
            "%s: zlock conflicts=%d but max-conflict-retries is %d: Zope gives up before the try that holds "
            "the lock, so a request can still fail on conflicts; set conflicts to %d", where, conflicts,
            retries, retries)
        return True
    return False


def delay_retry(self: Request) -> None:
    """No delay when the retry holds a reserved zlock; Zope's random back-off otherwise."""
    exc = sys.exc_info()[1]
    if retry_at_once(exc):
        logger.debug("retrying %s at once after %s", self.get("PATH_INFO", "?"), exc)
        return None
    original = _original
    if original is not None:
        original(self)
    return None


def request_label(request: Request) -> str:
    """``METHOD /path`` of a request (its PATH_INFO, as Zope's own log lines give it): the kind of
    transaction :mod:`unimr.memcachedlock.zodb.early` learns for, and the row ConflictErrors are counted under."""
    return "%s %s" % (request.get("REQUEST_METHOD") or "GET", request.get("PATH_INFO") or "/")


def lock_early(event: Any) -> None:
    """Subscriber of ``IPubStart`` (the request's transaction has begun, nothing is used yet): take the
    zlocks that requests like this one learned to take at begin, because they kept being retried at them
    after doing their work."""
    lock_early_for(request_label(event.request))


def end_label(event: Any) -> None:
    """Subscriber of ``IPubSuccess``/``IPubFailure``: the request's transactions are over."""
    lock_early_for(None)


def install() -> bool:
    """Patch ``ZPublisher.HTTPRequest.HTTPRequest.delay_retry``; False if it already was."""
    global _original
    from ZPublisher.HTTPRequest import HTTPRequest

    with _guard:
        if _original is not None:
            return False
        _original = HTTPRequest.__dict__["delay_retry"]
        HTTPRequest.delay_retry = delay_retry
    logger.info("Zope's publisher retries at once when the retry holds a zlock (other conflicts keep their back-off)")
    return True


def uninstall() -> bool:
    """Put Zope's ``delay_retry`` back; False if it was not patched."""
    global _original
    with _guard:
        if _original is None:
            return False
        from ZPublisher.HTTPRequest import HTTPRequest

        HTTPRequest.delay_retry = _original
        _original = None
    return True


def installed() -> bool:
    """True while the patch is in place."""
    return _original is not None
