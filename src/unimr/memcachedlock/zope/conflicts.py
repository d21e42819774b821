"""Where a Zope site's ConflictErrors are: counted by object class and by request.

Which objects to lock is a measurement, not a guess: on a Plone site the
retried requests met ``portal_uidgenerator``, not the catalog the 2009
package locked.  :func:`count_conflict` subscribes to Zope's
``IPubBeforeAbort`` (``conflicts.zcml``, also loaded by the catalog patch)
and counts every ConflictError a request meets, by the conflicting object's
class and by the request's method and path, in the process's metrics
(:func:`unimr.memcachedlock.metrics.record_conflict`);
``memcachedlock stats`` lists the top ones of all processes.

It also keeps the log readable.  Zope's SiteErrorLog writes one INFO line
per retried request; with the catalog patch most of those are ``LockBusy``
retries that are the lock doing its job.  Those lines go to DEBUG, and this
module writes one INFO line per :data:`SUMMARY_EVERY` seconds instead, with
the counts since the last one.  ConflictErrors keep their INFO lines.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from ZODB.POSException import ConflictError

from .. import metrics
from ..keys import shown
from ..zodb import LockBusy
from .publisher import request_label

logger = logging.getLogger(__name__)

#: The logger of Products.SiteErrorLog, whose "<exception> at <path>: ..." lines name retried requests.
SITE_ERROR_LOG = "Zope.SiteErrorLog"
#: Seconds between two INFO summaries of the conflicts met (one is written only when a conflict comes).
SUMMARY_EVERY = 60.0
#: Rows of each kind named in a summary line.
SUMMARY_ROWS = 3

_lock = threading.Lock()
_since: collections.Counter[str] = collections.Counter()
_last_summary = 0.0
_filter_installed = False


def conflict_class(exc: BaseException) -> str:
    """What a ConflictError met: the object's class, or for LockBusy the lock's key."""
    if isinstance(exc, LockBusy):
        return "LockBusy %s" % shown(exc.key) if exc.key is not None else "LockBusy"
    name = exc.get_class_name() if isinstance(exc, ConflictError) else None
    return name or "(class not known)"


def count_conflict(event: Any) -> None:
    """Subscriber of ``IPubBeforeAbort``: count the request's ConflictError, if it failed with one."""
    exc = event.exc_info[1]
    if not isinstance(exc, ConflictError):
        return
    install_log_filter()
    what = conflict_class(exc)
    metrics.record_conflict(what, request_label(event.request), bool(event.retry))
    _summarize(what)


def _summarize(what: str) -> None:
    """Count ``what``; at most every SUMMARY_EVERY seconds, log the counts since the last summary."""
    global _last_summary
    now = time.monotonic()
    with _lock:
        _since[what] += 1
        if now - _last_summary < SUMMARY_EVERY:
            return
        counts, _last_summary = dict(_since), now
        _since.clear()
    busy = sum(n for name, n in counts.items() if name.startswith("LockBusy"))
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:SUMMARY_ROWS]
    logger.info("%d retried or failed requests since the last summary (%d of them LockBusy: a zlock made "
                "them wait their turn); most on: %s", sum(counts.values()), busy,
                ", ".join("%s (%d)" % row for row in top))


class LockBusyToDebug(logging.Filter):
    """Pass SiteErrorLog's "LockBusy at ..." lines only where its logger is enabled for DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not str(record.msg).startswith("LockBusy at "):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(SITE_ERROR_LOG).isEnabledFor(logging.DEBUG)


def install_log_filter() -> bool:
    """Put :class:`LockBusyToDebug` on SiteErrorLog's logger (once per process); False if it was."""
    global _filter_installed
    with _lock:
        if _filter_installed:
            return False
        _filter_installed = True
    logging.getLogger(SITE_ERROR_LOG).addFilter(LockBusyToDebug())
    return True


def reset() -> None:
    """Forget the counts since the last summary (tests)."""
    global _last_summary
    with _lock:
        _since.clear()
        _last_summary = 0.0
