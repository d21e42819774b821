"""A real Zope WSGI instance on a real ZEO server, in its own process, for the Zope tests.

``ZopeInstance(zeo_port, patched=True).start()`` writes a zope.conf (a
``<zeoclient>`` main database) and an ``etc/site.zcml`` (Zope's default one,
plus the source tree's top-level ``configure.zcml`` when ``patched``), then
runs this file as a script: Zope's own ``make_wsgi_app`` served by waitress on
a free loopback port.  Nothing is mocked; the views below are what a site's
code would do:

``@@mcl-setup?size=N``  create ``/catalog`` (a ZCatalog with typical indexes)
``@@mcl-index?uid=U&work_ms=W[&queue=1][&hot=1]``  W ms of CPU work, then ``catalog_object``
(with ``queue``, through Products.CMFCore's indexing queue at commit; with
``hot``, after an increment of ``/mcl_counter``, as Plone's uid generator)
``@@mcl-count``  the catalog's entries and uids, and ``/mcl_counter``, as JSON
``@@mcl-raise?kind=busy|conflict&times=T&token=X``  raise LockBusy or a
ConflictError on the first T attempts of request X, then report the attempts'
times (for the publisher's retry delay)
``@@mcl-conflict?times=T&token=X``  increment ``/mcl_counter`` (a
``counters.Counter``) while, on the first T attempts, another connection
commits an increment of it first: a real ConflictError at commit

``/_mcl_stats`` (a WSGI middleware in front of Zope) reports how many
``catalog_object`` calls returned in this process.  Logging goes to
``event.log`` at INFO, as a site's WSGI ini would configure it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from Products.Five.browser import BrowserView

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

STATS = {"runs": 0}
_stats_lock = threading.Lock()
ATTEMPTS: dict[str, list[float]] = {}

ZOPE_CONF = """\
%%import ZEO
%%define INSTANCE %(dir)s
instancehome $INSTANCE
debug-mode off
security-policy-implementation python
max-conflict-retries 3
<zodb_db main>
  <zeoclient>
    server 127.0.0.1:%(zeo_port)d
    storage 1
    name zeostorage
    var $INSTANCE/var
    cache-size 20MB
  </zeoclient>
  mount-point /
</zodb_db>
"""

SITE_ZCML = """\
<configure xmlns="http://namespaces.zope.org/zope"
           xmlns:browser="http://namespaces.zope.org/browser"
           xmlns:five="http://namespaces.zope.org/five">
  <include package="Zope2.App" />
  <five:loadProducts file="meta.zcml"/>
  <five:loadProducts />
  <five:loadProductsOverrides />
  %(extra)s
  <browser:page for="*" name="mcl-setup" class="zopeinstance.Setup" permission="zope.Public" />
  <browser:page for="*" name="mcl-index" class="zopeinstance.IndexDocument" permission="zope.Public" />
  <browser:page for="*" name="mcl-count" class="zopeinstance.Count" permission="zope.Public" />
  <browser:page for="*" name="mcl-raise" class="zopeinstance.Raise" permission="zope.Public" />
  <browser:page for="*" name="mcl-conflict" class="zopeinstance.Conflict" permission="zope.Public" />
</configure>
"""


class Document:
    """A catalogued object."""

    def __init__(self, uid: str) -> None:
        self.id = uid
        self.title = "Document %s" % uid
        self.subject = ("zope", uid[-1:])


def burn(work_ms: float) -> None:
    """Spend ``work_ms`` milliseconds of this thread's CPU time (the request's own work)."""
    end = time.thread_time() + work_ms / 1000.0
    while time.thread_time() < end:
        pass


class Setup(BrowserView):
    """Create the catalog the tests write to."""

    def __call__(self) -> str:
        from Products.PluginIndexes.FieldIndex.FieldIndex import FieldIndex
        from Products.PluginIndexes.KeywordIndex.KeywordIndex import KeywordIndex
        from Products.ZCatalog.ZCatalog import ZCatalog

        from counters import Counter

        app = self.context
        if getattr(app.aq_base, "mcl_counter", None) is None:
            app.mcl_counter = Counter()
        if "catalog" not in app.objectIds():
            app._setObject("catalog", ZCatalog("catalog"))
            catalog = app._getOb("catalog")
            catalog.addIndex("id", FieldIndex("id"))
            catalog.addIndex("title", FieldIndex("title"))
            catalog.addIndex("subject", KeywordIndex("subject"))
            catalog.addColumn("title")
            for i in range(int(self.request.form.get("size", 0))):
                catalog.catalog_object(Document("old-%d" % i), "old-%d" % i)
        return "ok"


class IndexDocument(BrowserView):
    """A request that does its own work, then catalogs one document.

    With ``queue=1`` the document is queued in Products.CMFCore's indexing
    queue instead, as Plone does: the queue's before-commit hook catalogs it
    through :class:`QueueProcessor`, inside ``commit()``.
    """

    def __call__(self) -> str:
        uid = self.request.form["uid"]
        if self.request.form.get("hot"):
            self.context.mcl_counter.n += 1  # every request changes it before the catalog: Plone's uid generator
        burn(float(self.request.form.get("work_ms", 0)))
        document = Document(uid)
        if self.request.form.get("queue"):
            from Products.CMFCore.indexing import getQueue

            document.catalog = self.context.catalog
            getQueue().index(document)
        else:
            catalog_document(self.context.catalog, document)
        return "ok"


def catalog_document(catalog, document: Document) -> None:
    catalog.catalog_object(document, document.id)
    with _stats_lock:
        STATS["runs"] += 1


class QueueProcessor:
    """An ``IIndexQueueProcessor`` that catalogs queued documents into their catalog."""

    def index(self, obj, attributes=None) -> None:
        catalog_document(obj.catalog, obj)

    def reindex(self, obj, attributes=None, update_metadata=1) -> None:
        self.index(obj, attributes)

    def unindex(self, obj) -> None:
        obj.catalog.uncatalog_object(obj.id)

    def begin(self) -> None:
        pass

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass


def register_queue_processor() -> None:
    from Products.CMFCore.interfaces import IIndexQueueProcessor
    from zope.component import provideUtility
    from zope.interface import classImplements

    classImplements(QueueProcessor, IIndexQueueProcessor)
    provideUtility(QueueProcessor(), IIndexQueueProcessor, name="zopeinstance")


class Count(BrowserView):
    """The catalog's content."""

    def __call__(self) -> str:
        catalog = self.context.catalog
        self.request.response.setHeader("Content-Type", "application/json")
        return json.dumps({"entries": len(catalog), "uids": sorted(catalog._catalog.uids.keys()),
                           "hot": self.context.mcl_counter.n})


class Raise(BrowserView):
    """Fail the first ``times`` attempts of a request with LockBusy or a ConflictError."""

    def __call__(self) -> str:
        from ZODB.POSException import ConflictError

        from unimr.memcachedlock.zodb import LockBusy

        form = self.request.form
        attempts = ATTEMPTS.setdefault(form["token"], [])
        attempts.append(time.monotonic())
        if len(attempts) <= int(form["times"]):
            if form["kind"] == "busy":
                raise LockBusy(message="test lock busy", key="test", reserved=True)
            raise ConflictError(message="test conflict")
        self.request.response.setHeader("Content-Type", "application/json")
        return json.dumps({"attempts": attempts})


class Conflict(BrowserView):
    """Change ``/mcl_counter``; on the first ``times`` attempts another connection changes it first."""

    def __call__(self) -> str:
        import transaction

        from counters import Counter

        form = self.request.form
        app = self.context
        if getattr(app.aq_base, "mcl_counter", None) is None:
            app.mcl_counter = Counter()
            return "created"
        attempts = ATTEMPTS.setdefault(form["token"], [])
        attempts.append(time.monotonic())
        app.mcl_counter.n += 1
        if len(attempts) <= int(form["times"]):
            manager = transaction.TransactionManager()
            other = app._p_jar.db().open(transaction_manager=manager)
            try:
                with manager:
                    other.root()["Application"].mcl_counter.n += 1
            finally:
                other.close()
        self.request.response.setHeader("Content-Type", "application/json")
        return json.dumps({"attempts": attempts})


def stats_middleware(app):
    """Answer ``/_mcl_stats`` with this process's counters; pass everything else to Zope."""

    def wrapper(environ, start_response):
        if environ.get("PATH_INFO") == "/_mcl_stats":
            with _stats_lock:
                body = json.dumps(STATS).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        return app(environ, start_response)

    return wrapper


def serve(directory: str, port: int, threads: int) -> None:
    """Run Zope's WSGI app from ``directory/etc/zope.conf`` with waitress on ``port``."""
    logging.basicConfig(
        filename=os.path.join(directory, "event.log"), level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # SiteErrorLog's lines for LockBusy retries go to DEBUG with the catalog patch: keep them, the tests count them.
    logging.getLogger("Zope.SiteErrorLog").setLevel(logging.DEBUG)
    import waitress
    from Zope2.Startup.run import make_wsgi_app

    from servers import measure_from_here

    app = make_wsgi_app({}, os.path.join(directory, "etc", "zope.conf"))
    register_queue_processor()
    measure_from_here()
    waitress.serve(stats_middleware(app), host="127.0.0.1", port=port, threads=threads,
                   _quiet=True)


class ZopeInstance:
    """One Zope process (one ZEO client) serving HTTP on a free loopback port."""

    def __init__(self, zeo_port: int, patched: bool = True, threads: int = 1,
                 env: dict[str, str] | None = None) -> None:
        from servers import free_port

        self._tmp = tempfile.TemporaryDirectory(prefix="mcl-zope-")
        self.directory = self._tmp.name
        self.port = free_port()
        self.zeo_port = zeo_port
        self.patched = patched
        self.threads = threads
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "event.log")

    def start(self, timeout: float = 60) -> ZopeInstance:
        os.makedirs(os.path.join(self.directory, "etc"))
        os.makedirs(os.path.join(self.directory, "var"))
        with open(os.path.join(self.directory, "etc", "zope.conf"), "w") as f:
            f.write(ZOPE_CONF % {"dir": self.directory, "zeo_port": self.zeo_port})
        extra = '<include file="%s" />' % os.path.join(ROOT, "configure.zcml") if self.patched else ""
        with open(os.path.join(self.directory, "etc", "site.zcml"), "w") as f:
            f.write(SITE_ZCML % {"extra": extra})
        from servers import measured_after_start

        env = dict(measured_after_start(os.environ), **self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, env.get("PYTHONPATH")]))
        with open(os.path.join(self.directory, "stderr.log"), "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), self.directory, str(self.port), str(self.threads)],
                stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=self.directory,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get("/_mcl_stats", timeout=2)
                return self
            except OSError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("Zope did not start: %s" % self.read("stderr.log")[-3000:]) from exc
                time.sleep(0.1)

    def get(self, path: str, timeout: float = 60) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read()

    def json(self, path: str) -> dict:
        return json.loads(self.get(path))

    def read(self, name: str) -> str:
        try:
            with open(os.path.join(self.directory, name), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            from servers import stop_process
            stop_process(self.proc, 15)
            self.proc = None

    def __enter__(self) -> ZopeInstance:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._tmp.cleanup()


if __name__ == "__main__":
    import zopeinstance  # the views' module: its STATS is the one the middleware must report

    zopeinstance.serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
