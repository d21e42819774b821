"""A throwaway Plone 6 site on a real ZEO server, served by real Zope processes: for tests and benchmarks.

Nothing is mocked.  The pieces, each usable on its own:

:func:`template`
    Creates a Plone site once, in a FileStorage of its own (a Zope process
    that loads Plone's ZCML, runs ``Products.CMFPlone.factory.addPloneSite``
    with the ``plone.app.contenttypes:default`` and ``plone.restapi:default``
    extension profiles, adds a Manager ``admin`` to the Zope root's user
    folder and a Folder ``/Plone/folder``, and commits).  Every site used
    afterwards starts from a *copy* of that ``Data.fs``, so a round costs a
    file copy, not a site creation (6-10 s with Zope's start-up).  The
    template is cached in ``.plonesite-cache/`` at the top of the source
    tree, keyed by the versions of the distributions that shape it (Plone,
    plone.restapi, Zope, ZODB, ...) and by how it is made (the instance
    files, :func:`_create_site`); ``PLONESITE_CACHE`` moves the cache,
    ``PLONESITE_CACHE=off`` makes a fresh template in the cluster's
    temporary directory every time.
:class:`PloneCluster`
    A ZEO server on a copy of the template (``tests/zeoserver.py``) and N
    Zope processes, each ``runwsgi etc/zope.ini`` (waitress, ``threads`` worker
    threads, a free loopback port) with a ``zope.conf`` whose main database
    is a ``<zeoclient>``, as ``mkwsgiinstance`` and plone.recipe.zope2instance
    write them.  ``patched=True`` adds the catalog patch the way a site does
    it, a slug ``etc/package-includes/001-unimr.memcachedlock-configure.zcml``
    that includes the package's ``catalog.zcml``, and puts
    ``MEMCACHEDLOCK_SERVERS``/``MEMCACHEDLOCK_PREFIX`` in zope.conf's
    ``<environment>``.  Every instance logs to ``var/log/event.log`` (INFO),
    kept until the cluster is left, for :func:`retries`.
:class:`RestClient`
    plone.restapi calls over HTTP with basic auth as ``admin``: add, edit,
    publish, delete a Document, each timed and tagged with the instance
    that served it.
:func:`inspect`
    Reads the committed state straight from the ZEO server (in a process of
    its own, so that the caller never imports Plone): the folder's items,
    the catalog's entries under the folder, their UIDs and titles, the
    folder's ordering, and the class and attribute path (breadth first from
    the root) of given oids.

What this file adds inside the Zope processes (``etc/site.zcml`` names its
functions): :func:`log_failure`, an ``IPubFailure`` subscriber that logs every
failed attempt of a request with its method (Products.SiteErrorLog's line has
the path but not the method); and, with ``trace=True``, :func:`process_starting`
installs :func:`install_trace`: per transaction attempt, one JSON line in
``var/log/trace.jsonl`` with the objects it stored (class, oid, new or
changed) and, when the catalog patch is loaded, where the transaction first
asked for a zlock (the stack), what it had changed and used by then, and the
LockBusy it met.  Tracing costs time; the benchmark keeps it off unless
asked.

Run as a script: ``python tests/plonesite.py template DIR`` makes a template
in DIR, ``python tests/plonesite.py inspect PORT [OID...]`` prints the state as
JSON (both used by the functions above).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from servers import unmeasured

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)

SITE_ID = "Plone"
FOLDER_ID = "folder"
FOLDER_PATH = "/%s/%s" % (SITE_ID, FOLDER_ID)
ADMIN = ("admin", "admin-secret")
EXTENSION_PROFILES = ("plone.app.contenttypes:default", "plone.restapi:default")

#: Distributions whose versions shape the template: another version of any of them makes a new one.
TEMPLATE_DISTRIBUTIONS = ("Plone", "Products.CMFPlone", "plone.restapi", "plone.app.contenttypes",
                          "plone.volto", "Zope", "ZODB", "Products.CMFCore", "Products.ZCatalog",
                          "Products.CMFEditions", "plone.app.layout")

log = logging.getLogger("plonesite")

# -- the instance's files --------------------------------------------------------------------------------------

ZOPE_CONF = """\
%%define INSTANCE %(dir)s
instancehome $INSTANCE
debug-mode off
verbose-security off
max-conflict-retries 3
<environment>
%(environment)s
</environment>
<zodb_db main>
%(storage)s
  mount-point /
  cache-size 30000
</zodb_db>
"""

ZEO_STORAGE = """\
  <zeoclient>
    server 127.0.0.1:%(zeo_port)d
    storage 1
    name zeostorage
    var $INSTANCE/var
    cache-size 128MB
  </zeoclient>"""

FILE_STORAGE = """\
  <filestorage>
    path $INSTANCE/var/Data.fs
  </filestorage>"""

#: plone.recipe.zope2instance's site.zcml, plus this harness's subscribers.
SITE_ZCML = """\
<configure
    xmlns="http://namespaces.zope.org/zope"
    xmlns:meta="http://namespaces.zope.org/meta"
    xmlns:five="http://namespaces.zope.org/five">

  <include package="Zope2.App" />
  <include package="Products.Five" />
  <meta:redefinePermission from="zope2.Public" to="zope.Public" />

  <include files="package-includes/*-meta.zcml" />
  <five:loadProducts file="meta.zcml"/>

  <include files="package-includes/*-configure.zcml" />
  <five:loadProducts />

  <includeOverrides files="package-includes/*-overrides.zcml" />
  <five:loadProductsOverrides />

  <securityPolicy component="AccessControl.security.SecurityPolicy" />

  <!-- tests/plonesite.py: the harness's own observers -->
  <subscriber for="ZPublisher.interfaces.IPubFailure" handler="plonesite.log_failure" />
  <subscriber for="zope.processlifetime.IProcessStarting" handler="plonesite.process_starting" />

</configure>
"""

ZOPE_INI = """\
[app:zope]
use = egg:Zope#main
zope_conf = %%(here)s/zope.conf

[server:main]
use = egg:waitress#main
listen = 127.0.0.1:%(port)d
threads = %(threads)d

[pipeline:main]
pipeline =
    egg:Zope#httpexceptions
    zope

[loggers]
keys = root, waitress.queue, waitress

[handlers]
keys = eventlog

[formatters]
keys = generic

[formatter_generic]
format = %%(asctime)s.%%(msecs)03d %%(levelname)s [%%(name)s:%%(lineno)s][%%(threadName)s] %%(message)s
datefmt = %%Y-%%m-%%d %%H:%%M:%%S

[logger_root]
level = INFO
handlers = eventlog

[logger_waitress.queue]
level = INFO
handlers = eventlog
qualname = waitress.queue
propagate = 0

[logger_waitress]
level = INFO
handlers = eventlog
qualname = waitress
propagate = 0

[handler_eventlog]
class = FileHandler
args = (r'%(log)s', 'a')
level = INFO
formatter = generic
"""


def catalog_patch_include() -> str:
    """The ``<include>`` of the package's catalog patch, wherever the package keeps ``catalog.zcml``."""
    import importlib.util

    spec = importlib.util.find_spec("unimr.memcachedlock")
    for location in spec.submodule_search_locations:
        for package in ("unimr.memcachedlock", "unimr.memcachedlock.zope"):
            relative = package.split(".")[2:]
            if os.path.exists(os.path.join(location, *relative, "catalog.zcml")):
                return '<include package="%s" file="catalog.zcml" />' % package
    raise RuntimeError("catalog.zcml not found in unimr.memcachedlock")


def write_instance(directory: str, storage: str, port: int = 0, threads: int = 2, patched: bool = False,
                   environment: dict[str, str] | None = None) -> None:
    """Write ``directory/etc/{zope.conf,zope.ini,site.zcml}`` (and the patch's slug when ``patched``)."""
    for sub in ("etc/package-includes", "var/log", "var/cache"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    env = {"CHAMELEON_CACHE": os.path.join(directory, "var", "cache")}
    env.update(environment or {})
    with open(os.path.join(directory, "etc", "zope.conf"), "w") as f:
        f.write(ZOPE_CONF % {"dir": directory, "storage": storage,
                             "environment": "\n".join("  %s %s" % item for item in sorted(env.items()))})
    with open(os.path.join(directory, "etc", "site.zcml"), "w") as f:
        f.write(SITE_ZCML)
    with open(os.path.join(directory, "etc", "zope.ini"), "w") as f:
        f.write(ZOPE_INI % {"port": port, "threads": threads,
                            "log": os.path.join(directory, "var", "log", "event.log")})
    if patched:
        with open(os.path.join(directory, "etc", "package-includes", "001-unimr.memcachedlock-configure.zcml"),
                  "w") as f:
            f.write('<configure xmlns="http://namespaces.zope.org/zope">\n  <include package="unimr.memcachedlock" />'
                    "\n  %s\n</configure>\n" % catalog_patch_include())


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the Zope processes: this directory importable (``plonesite``, ``zeoserver``)."""
    env = dict(unmeasured(os.environ), **(extra or {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, env.get("PYTHONPATH")]))
    return env


# -- the template site ---------------------------------------------------------------------------------------

def template_key() -> str:
    """What the cached template depends on: the shaping distributions' versions and how it is made."""
    from importlib import metadata

    digest = hashlib.sha256()
    for name in TEMPLATE_DISTRIBUTIONS:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "-"
        digest.update(("%s==%s\n" % (name, version)).encode())
    import inspect as _inspect_module

    digest.update(repr((SITE_ID, FOLDER_ID, ADMIN, EXTENSION_PROFILES, SITE_ZCML, ZOPE_CONF, FILE_STORAGE,
                        sys.version)).encode())
    digest.update(_inspect_module.getsource(_create_site).encode())
    return digest.hexdigest()[:16]


def template(scratch: str | None = None) -> str:
    """Path of a ``Data.fs`` holding a fresh Plone site (cached unless ``PLONESITE_CACHE=off``).

    ``scratch`` is where an uncached template is made (a directory that
    the caller removes).
    """
    cache = os.environ.get("PLONESITE_CACHE", os.path.join(ROOT, ".plonesite-cache"))
    if cache == "off":
        if scratch is None:
            raise ValueError("PLONESITE_CACHE=off needs a scratch directory")
        directory = os.path.join(scratch, "template")
        make_template(directory)
        return os.path.join(directory, "var", "Data.fs")
    directory = os.path.join(cache, template_key())
    data_fs = os.path.join(directory, "var", "Data.fs")
    if os.path.exists(os.path.join(directory, "done")):
        return data_fs
    os.makedirs(cache, exist_ok=True)
    building = tempfile.mkdtemp(prefix="building-", dir=cache)
    try:
        make_template(building)
        with open(os.path.join(building, "done"), "w") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S\n"))
        try:
            os.rename(building, directory)
        except OSError:  # another process made it meanwhile
            if not os.path.exists(os.path.join(directory, "done")):
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return data_fs


def make_template(directory: str, timeout: float = 600) -> None:
    """Create the site in ``directory/var/Data.fs`` (a FileStorage) in a Zope process of its own."""
    write_instance(directory, FILE_STORAGE)
    started = time.monotonic()
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "template", directory],
                            env=subprocess_env(), cwd=directory, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not os.path.exists(os.path.join(directory, "var", "Data.fs")):
        raise RuntimeError("could not create the Plone site (exit %d):\n%s" % (result.returncode,
                                                                              result.stderr[-5000:]))
    log.info("Plone site template made in %.1fs", time.monotonic() - started)


def _create_site(directory: str) -> None:
    """In a Zope process of its own: the admin, the Plone site with plone.restapi, the folder; commit."""
    import transaction
    import Zope2
    from AccessControl.SecurityManagement import newSecurityManager
    from AccessControl.users import system
    from Testing.makerequest import makerequest
    from zope.component.hooks import setSite
    from zope.globalrequest import setRequest
    from Zope2.Startup.run import make_wsgi_app

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    make_wsgi_app({}, os.path.join(directory, "etc", "zope.conf"))
    app = makerequest(Zope2.app())
    app.REQUEST["PARENTS"] = [app]
    setRequest(app.REQUEST)
    newSecurityManager(None, system)
    app.acl_users._doAddUser(ADMIN[0], ADMIN[1], ["Manager"], [])
    from Products.CMFPlone.factory import addPloneSite

    site = addPloneSite(app, SITE_ID, title="memcachedlock test site", extension_ids=EXTENSION_PROFILES)
    setSite(site)
    site.invokeFactory("Folder", FOLDER_ID, title="Documents")
    transaction.commit()
    app._p_jar.db().close()


# -- a ZEO server and Zope processes ---------------------------------------------------------------------------

class ZopeProcess:
    """One instance: ``runwsgi etc/zope.ini`` in ``directory`` (a ZEO client), on a free loopback port."""

    def __init__(self, directory: str, zeo_port: int, threads: int = 2, patched: bool = False,
                 environment: dict[str, str] | None = None) -> None:
        from servers import free_port

        self.directory = directory
        self.port = free_port()
        self.threads = threads
        self.patched = patched
        write_instance(directory, ZEO_STORAGE % {"zeo_port": zeo_port}, self.port, threads, patched, environment)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "var", "log", "event.log")

    @property
    def trace_path(self) -> str:
        return os.path.join(self.directory, "var", "log", "trace.jsonl")

    def launch(self) -> None:
        with open(os.path.join(self.directory, "var", "log", "stderr.log"), "ab") as stderr:
            self.proc = subprocess.Popen(
                [os.path.join(BIN, "runwsgi"), os.path.join(self.directory, "etc", "zope.ini")],
                stdout=subprocess.DEVNULL, stderr=stderr, env=subprocess_env(), cwd=self.directory)

    def wait_ready(self, timeout: float = 180) -> None:
        """Until the instance answers HTTP (any status) or the process ends."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.url + "/", timeout=5).read()
                return
            except urllib.error.HTTPError:
                return
            except OSError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Zope at %s did not start (exit %s):\n%s" % (
                        self.directory, self.proc.poll(), self.read("stderr.log")[-4000:]
                        + self.read("event.log")[-4000:])) from exc
                time.sleep(0.25)

    def read(self, name: str = "event.log") -> str:
        try:
            with open(os.path.join(self.directory, "var", "log", name), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            from servers import stop_process
            stop_process(self.proc, 20)
            self.proc = None


class PloneCluster:
    """A ZEO server on a copy of the template site and ``instances`` Zope processes, in a temporary directory.

    ``servers`` (memcached addresses), ``prefix`` and ``store`` (the lock
    store's kind: ``fallback``, a site's default, with a lock directory in
    the cluster's directory, or ``memcached``) go into every instance's
    ``<environment>`` when ``patched``; ``keep`` leaves the directory (logs,
    Data.fs) behind and names it in ``self.directory``.
    """

    def __init__(self, instances: int = 2, threads: int = 2, patched: bool = False, servers: str | None = None,
                 prefix: str | None = None, trace: bool = False, keep: bool = False,
                 data_fs: str | None = None, store: str = "fallback") -> None:
        if patched and not servers:
            raise ValueError("a patched cluster needs memcached servers")
        self.directory = tempfile.mkdtemp(prefix="mcl-plone-")
        self.instances = instances
        self.threads = threads
        self.patched = patched
        self.servers = servers
        self.prefix = prefix
        self.store = store
        self.trace = trace
        self.keep = keep
        self.data_fs = data_fs
        self.zeo = None
        self.zopes: list[ZopeProcess] = []
        self.timings: dict[str, float] = {}

    @property
    def urls(self) -> list[str]:
        return [zope.url for zope in self.zopes]

    def start(self) -> PloneCluster:
        from zeoserver import ZEOServer

        try:
            started = time.monotonic()
            data_fs = self.data_fs or template(self.directory)
            self.timings["template"] = time.monotonic() - started
            zeo_dir = os.path.join(self.directory, "zeo")
            os.makedirs(zeo_dir)
            shutil.copyfile(data_fs, os.path.join(zeo_dir, "Data.fs"))
            if os.path.exists(data_fs + ".index"):
                shutil.copyfile(data_fs + ".index", os.path.join(zeo_dir, "Data.fs.index"))
            self.zeo = ZEOServer(directory=zeo_dir).start()
            environment = {}
            if self.patched:
                environment["MEMCACHEDLOCK_SERVERS"] = self.servers
                environment["MEMCACHEDLOCK_BACKEND"] = self.store
                environment["MEMCACHEDLOCK_DIR"] = os.path.join(self.directory, "locks")
                environment["MEMCACHEDLOCK_PREFIX"] = self.prefix or "plone%d:" % self.zeo.port
            if self.trace:
                environment["PLONESITE_TRACE"] = "on"
            started = time.monotonic()
            self.zopes = [ZopeProcess(os.path.join(self.directory, "zope%d" % i), self.zeo.port, self.threads,
                                      self.patched, environment)
                          for i in range(self.instances)]
            for zope in self.zopes:
                zope.launch()
            for zope in self.zopes:
                zope.wait_ready()
            self.timings["zope start"] = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for zope in self.zopes:
            zope.stop()
        if self.zeo is not None:
            self.zeo.stop()
            self.zeo = None

    def logs(self) -> str:
        return "".join(zope.read() for zope in self.zopes)

    def traces(self) -> list[dict]:
        found = []
        for n, zope in enumerate(self.zopes):
            for line in zope.read("trace.jsonl").splitlines():
                if line.strip():
                    record = json.loads(line)
                    record["instance"] = n
                    found.append(record)
        return found

    def inspect(self, oids: list[str] = ()) -> dict:
        return inspect(self.zeo.port, oids)

    def cleanup(self) -> None:
        self.stop()
        if not self.keep:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PloneCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


# -- plone.restapi over HTTP ----------------------------------------------------------------------------------

class RestClient:
    """plone.restapi requests as ``admin`` (basic auth), alternating between instances, each one timed.

    Every request is recorded in ``self.records`` (``op``, ``method``,
    ``path``, ``instance``, ``status``, ``start``, ``end`` in
    ``time.monotonic()`` seconds); requests are sent to ``urls`` in turn,
    starting at ``first``.
    """

    def __init__(self, urls: list[str], first: int = 0, timeout: float = 300) -> None:
        import requests

        self.urls = urls
        self.turn = first
        self.timeout = timeout
        self.session = requests.Session()
        self.session.auth = ADMIN
        self.session.headers.update({"Accept": "application/json", "Content-Type": "application/json"})
        self.records: list[dict] = []

    def _send(self, op: str, method: str, path: str, body: dict | None = None) -> Any:
        import requests

        instance = self.turn % len(self.urls)
        self.turn += 1
        record = {"op": op, "method": method, "path": path, "instance": instance}
        record["start"] = time.monotonic()
        try:
            response = self.session.request(method, self.urls[instance] + path,
                                            data=json.dumps(body) if body is not None else None,
                                            timeout=self.timeout)
            record["status"] = response.status_code
        except requests.RequestException as exc:
            response = None
            record["status"] = 0
            record["error"] = str(exc)
        record["end"] = time.monotonic()
        self.records.append(record)
        return response

    def add(self, doc_id: str, text: str = "") -> bool:
        body = {"@type": "Document", "id": doc_id, "title": doc_id,
                "text": {"data": "<p>%s</p>" % (text or doc_id), "content-type": "text/html", "encoding": "utf8"}}
        response = self._send("add", "POST", FOLDER_PATH, body)
        return response is not None and response.status_code == 201

    def edit(self, doc_id: str, text: str = "") -> bool:
        body = {"title": doc_id + " (edited)",
                "text": {"data": "<p>%s edited</p>" % (text or doc_id), "content-type": "text/html",
                         "encoding": "utf8"}}
        response = self._send("edit", "PATCH", "%s/%s" % (FOLDER_PATH, doc_id), body)
        return response is not None and response.status_code == 204

    def transition(self, doc_id: str, transition: str = "publish") -> bool:
        response = self._send("transition", "POST", "%s/%s/@workflow/%s" % (FOLDER_PATH, doc_id, transition), {})
        return response is not None and response.status_code == 200

    def delete(self, doc_id: str) -> bool:
        response = self._send("delete", "DELETE", "%s/%s" % (FOLDER_PATH, doc_id))
        return response is not None and response.status_code == 204

    def close(self) -> None:
        self.session.close()


# -- the committed state ----------------------------------------------------------------------------------------

def inspect(zeo_port: int, oids: list[str] = (), timeout: float = 120) -> dict:
    """The folder and its catalog entries as stored on the ZEO server (see :func:`_inspect`)."""
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "inspect", str(zeo_port)] + list(oids),
                            env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError("inspect failed (exit %d):\n%s" % (result.returncode, result.stderr[-5000:]))
    return json.loads(result.stdout)


def describe_object(obj: Any) -> str:
    """A persistent object's class, with its id or path when it has one."""
    cls = type(obj)
    name = "%s.%s" % (cls.__module__, cls.__qualname__)
    try:
        state = obj.__dict__
    except Exception:
        state = {}
    ident = state.get("id") or state.get("__name__")
    if isinstance(ident, str):
        name += " %r" % ident
    return name


def _inspect(zeo_port: int, oids: list[str]) -> dict:
    """Folder items (id, UID, title), catalog entries under the folder (path, UID), and the oids' classes."""
    import ZEO
    from ZODB.utils import p64

    db = ZEO.DB(("127.0.0.1", zeo_port), read_only=True)
    conn = db.open()
    try:
        app = conn.root()["Application"]
        site = app._getOb(SITE_ID)
        folder = site._getOb(FOLDER_ID)
        items = []
        for doc_id, obj in folder._tree.items():  # objectIds() needs the ordering adapter (ZCML)
            items.append({"id": doc_id, "uid": getattr(obj, "_plone.uuid", None), "title": obj.title,
                          "portal_type": getattr(obj, "portal_type", None)})
        annotations = getattr(folder, "__annotations__", {})
        order = list(annotations.get("plone.folder.ordered.order", ()))
        positions = dict(annotations.get("plone.folder.ordered.pos", {}))
        catalog = site._getOb("portal_catalog")._catalog
        uid_index = catalog.indexes["UID"]
        prefix = FOLDER_PATH + "/"
        entries = []
        for path, rid in catalog.uids.items():
            if path.startswith(prefix):
                entries.append({"path": path, "rid": rid, "uid": uid_index._unindex.get(rid)})
        uid_rids = {}
        for entry in entries:
            if entry["uid"] is not None:
                uid_rids[entry["uid"]] = uid_index._index.get(entry["uid"])
        classes = {}
        for oid in oids:
            try:
                classes[oid] = describe_object(conn.get(p64(int(oid, 16))))
            except Exception as exc:  # a removed object, or one made by a rolled-back commit
                classes[oid] = "? (%s)" % type(exc).__name__
        names = object_names(conn, {p64(int(oid, 16)) for oid in oids}) if oids else {}
        return {"items": items, "entries": entries, "catalog_size": len(catalog), "uid_rids": uid_rids,
                "folder_count": len(items), "folder_length": folder._count(), "order": order,
                "positions": positions, "classes": classes,
                "names": {oid.hex(): name for oid, name in names.items()}}
    finally:
        conn.close()
        db.close()


def _children(obj: Any):
    """``(name suffix, value)`` of what a persistent object refers to (its state, one container deep)."""
    from persistent import Persistent

    if type(obj).__module__.startswith("BTrees."):
        # A bucket's state is (k0, v0, k1, v1, ..., next); a tree's (child0, k1, child1, ..., firstbucket).
        def walk(state):
            if isinstance(state, tuple):
                for index, item in enumerate(state):
                    if isinstance(item, Persistent):
                        if type(item).__module__.startswith("BTrees.") and type(item).__module__ == \
                                type(obj).__module__:
                            yield "/<%s>" % type(item).__name__, item
                        elif index % 2 == 1:
                            yield "[%r]" % (state[index - 1],), item
                        else:
                            yield "/<%s>" % type(item).__name__, item
                    elif isinstance(item, tuple):
                        yield from walk(item)
        state = obj.__getstate__()
        yield from walk(state if isinstance(state, tuple) else ())
        return
    try:
        obj._p_activate()
        state = dict(obj.__dict__)
    except Exception:
        return
    for key, value in state.items():
        if key.startswith("_v_"):
            continue
        if isinstance(value, Persistent):
            yield ".%s" % key, value
        elif isinstance(value, dict):
            for sub, item in value.items():
                if isinstance(item, Persistent):
                    yield ".%s[%r]" % (key, sub), item
        elif isinstance(value, (list, tuple)):
            for sub, item in enumerate(value):
                if isinstance(item, Persistent):
                    yield ".%s[%d]" % (key, sub), item


def _readable(path: str) -> str:
    """``root.data['Application'].Plone._tree/<OOBucket>['folder']._tree`` -> ``/Plone/folder._tree``."""
    path = path.replace("root.data['Application']", "", 1)
    path = re.sub(r"\._tree(?:/<\w+>)*\['([^']+)'\]", r"/\1", path)
    path = re.sub(r"^\.(\w+)", r"/\1", path)
    return path or "/"


def object_names(conn: Any, wanted: set[bytes], budget: int = 200000) -> dict[bytes, str]:
    """The shortest attribute path from the root to each wanted oid (breadth first over the database)."""
    import collections

    root = conn.root()
    names: dict[bytes, str] = {}
    seen = {root._p_oid}
    queue = collections.deque([(root, "root")])
    while queue and len(names) < len(wanted) and budget > 0:
        obj, path = queue.popleft()
        budget -= 1
        if obj._p_oid in wanted:
            names[obj._p_oid] = "%s (%s)" % (_readable(path), type(obj).__name__)
        try:
            children = list(_children(obj))
        except Exception:
            continue
        for suffix, child in children:
            oid = child._p_oid
            if oid is not None and oid not in seen:
                seen.add(oid)
                queue.append((child, path + suffix))
    return names


# -- inside the Zope processes: the harness's observers -----------------------------------------------------------

failure_log = logging.getLogger("plonesite.failure")


def log_failure(event) -> None:
    """IPubFailure subscriber: one line per failed attempt, with the method SiteErrorLog's line lacks."""
    try:
        request = event.request
        exc = event.exc_info[1]
        failure_log.info("%s %s %s retry=%s %s: %s", "mcl-failure", request.get("REQUEST_METHOD", "?"),
                         request.get("PATH_INFO", "?"), bool(event.retry), type(exc).__name__,
                         str(exc).replace("\n", " ")[:2000])
    except Exception:
        failure_log.exception("could not log a failure")


def process_starting(event) -> None:
    if os.environ.get("PLONESITE_TRACE") == "on":
        install_trace()


_trace_lock = threading.Lock()


def _trace_file():
    return os.path.join(os.environ.get("INSTANCE_HOME") or os.getcwd(), "var", "log", "trace.jsonl")


def _write_trace(record: dict) -> None:
    line = json.dumps(record, default=str)
    with _trace_lock, open(_trace_file(), "a") as f:
        f.write(line + "\n")


def _frames(limit: int = 40) -> list[str]:
    """The current stack, innermost last, as ``file:line function`` (site-packages stripped)."""
    import traceback

    frames = traceback.extract_stack()[:-2]
    shown = []
    for frame in frames[-limit:]:
        filename = frame.filename
        marker = filename.find("site-packages/")
        if marker >= 0:
            filename = filename[marker + len("site-packages/"):]
        shown.append("%s:%d %s" % (filename, frame.lineno, frame.name))
    return shown


def _txn_record(txn) -> dict:
    """The trace record of ``txn`` (made at first use; written when the transaction ends)."""
    try:
        return txn.data(_txn_record)
    except KeyError:
        pass
    from zope.globalrequest import getRequest

    request = getRequest()
    record = {"pid": os.getpid(), "thread": threading.current_thread().name, "begin": time.time(),
              "method": request.get("REQUEST_METHOD") if request is not None else None,
              "path": request.get("PATH_INFO") if request is not None else None,
              "stored": [], "lock": None}
    txn.set_data(_txn_record, record)
    txn.addAfterCommitHook(_txn_done, (record,))
    txn.addAfterAbortHook(_txn_abort, (record,))
    return record


#: Per-record memory of install_trace's lock wrapper, dropped when the record is written.
_forget_used: list[dict] = []


#: The connection that voted for each record (by id), to read the tid it committed.
_voters: dict[int, Any] = {}


def _commit_details(txn, conn, record: dict) -> None:
    """The view the commit was made on and the notes of the zlocks it held (read when it took them)."""
    from unimr.memcachedlock.zodb import holding, views

    _voters[id(record)] = conn
    view = views.view_start(conn)
    record["view"] = view.hex() if view else None
    try:
        held = txn.data(holding.TXN_DATA_KEY).held
    except KeyError:
        return
    record["notes"] = {name: {k: v.hex() if isinstance(v, bytes) else repr(v) for k, v in entry.note.items()}
                       for name, entry in held.items()}


def _txn_done(status: bool, record: dict) -> None:
    record["outcome"] = "committed" if status else "commit failed"
    conn = _voters.pop(id(record), None)
    if status and conn is not None:
        try:
            from unimr.memcachedlock.zodb import private as zodbprivate

            tid = zodbprivate.last_committed(zodbprivate.normal_storage(conn))
            record["tid"] = tid.hex() if tid else None
        except Exception as exc:
            record["tid_error"] = repr(exc)
    if not status:
        error = sys.exc_info()[1]  # the hook runs inside commit()'s except block
        if error is not None:
            record["error"] = "%s: %s" % (type(error).__name__, str(error)[:500])
    _finish(record)


def _txn_abort(record: dict) -> None:
    if "outcome" not in record:
        record["outcome"] = "aborted"
        _finish(record)


def _finish(record: dict) -> None:
    record["end"] = time.time()
    _voters.pop(id(record), None)
    for memory in _forget_used:
        memory.pop(id(record), None)
    _write_trace(record)


def _objects(conn, oids) -> list[list]:
    """``[oid hex, description]`` of each oid found in ``conn``'s cache."""
    found = []
    for oid in oids:
        obj = conn._cache.get(oid)
        found.append([oid.hex(), describe_object(obj) if obj is not None else "?"])
    return found


def _lock_state(txn) -> dict | None:
    """The transaction's zlocks when it commits: held, passing the commit gate, or to be taken at commit."""
    try:
        from unimr.memcachedlock.zodb import holding

        locks = txn.data(holding.TXN_DATA_KEY)
    except Exception:
        return None
    return {kind: sorted(getattr(locks, kind, {})) for kind in ("held", "passes", "pending")}


def _blocking(txn, used: set[str]) -> dict:
    """At a LockBusy: the objects newer commits changed that this transaction changed, used or holds.

    All of them, not only the first one the lock names: why its view could
    not be moved forward.  ``used`` is what it had used when it first asked
    for the lock (oid hex strings).
    """
    from unimr.memcachedlock.zodb import private as zodbprivate
    from unimr.memcachedlock.zodb import viewmove as viewrefresh
    from unimr.memcachedlock.zodb import views

    found = {"newer_changed": 0, "blocking_changed": [], "blocking_used": [], "blocking_in_memory": []}
    for conn in views.connections_of(txn):
        pending = zodbprivate.pending_invalidations(zodbprivate.normal_storage(conn))
        if pending is None:
            continue
        found["newer_changed"] += len(pending)
        touched = zodbprivate.touched_oids(conn)
        for oid in sorted(pending):
            obj = conn._cache.get(oid)
            described = [oid.hex(), describe_object(obj) if obj is not None else "?"]
            if oid in touched:
                found["blocking_changed"].append(described)
            elif oid.hex() in used:
                found["blocking_used"].append(described)
            elif obj is not None and obj._p_changed is not None and not viewrefresh.sees_every_read(obj):
                found["blocking_in_memory"].append(described)
    return found


def install_trace() -> None:
    """Record, per transaction attempt, what it stored and how it met the catalog's zlock (see module doc)."""
    from ZODB.Connection import Connection

    original_vote = Connection.tpc_vote

    def tpc_vote(self, transaction):
        try:
            txn = transaction if hasattr(transaction, "set_data") else None
            if txn is not None:
                record = _txn_record(txn)
                creating = set(self._creating)
                oids = list(dict.fromkeys(list(self._modified) + list(self._creating)))  # savepoints repeat
                record["locks_at_commit"] = _lock_state(txn)
                _commit_details(txn, self, record)
                record["stored"].append({
                    "database": self.db().database_name,
                    "objects": [[oid.hex(), describe_object(self._cache.get(oid)), oid in creating]
                                for oid in oids],
                })
        except Exception as exc:  # never break a commit
            log.debug("trace: %s", exc)
        return original_vote(self, transaction)

    Connection.tpc_vote = tpc_vote
    try:
        from unimr.memcachedlock.zodb import decorator, views
        from unimr.memcachedlock.zodb import locking as transactionlock
        from unimr.memcachedlock.zodb import viewmove as viewrefresh
    except ImportError:
        return
    original_lock = decorator.hold_for_transaction
    used_oids: dict[int, set[str]] = {}
    _forget_used.append(used_oids)

    def lock_for_transaction(key, *args, **kw):
        txn = transactionlock.current_transaction()
        record = None
        if txn is not None:
            try:
                record = _txn_record(txn)
                if record["lock"] is None:
                    record["lock"] = first = {"key": str(key), "at": time.time(), "stack": _frames()}
                    changed, used = [], []
                    for conn in views.connections_of(txn):
                        # Changed since the last savepoint, saved in a savepoint, or passed to readCurrent.
                        changed += _objects(conn, [obj._p_oid for obj in conn._registered_objects
                                                   if obj._p_oid is not None])
                        savepoints = getattr(conn, "_savepoint_storage", None)
                        if savepoints is not None:
                            changed += [[oid, "%s (savepoint)" % kind]
                                        for oid, kind in _objects(conn, list(savepoints.index))]
                        changed += [[oid, "%s (readCurrent)" % kind]
                                    for oid, kind in _objects(conn, list(getattr(conn, "_readCurrent", {})))]
                        oids = viewrefresh.used_since_view_began(conn)
                        if oids is None:
                            first["used_unknown"] = True
                        else:
                            used += _objects(conn, sorted(oids))
                    first["changed_before"] = changed
                    # What it used: kept whole in memory (to place a LockBusy's oid), written by class.
                    used_oids[id(record)] = {oid for oid, _ in used}
                    counts: dict[str, int] = {}
                    for _, kind in used:
                        kind = kind.split(" ")[0]
                        counts[kind] = counts.get(kind, 0) + 1
                    first["used_before"] = {"objects": len(used), "by_class": counts}
            except Exception as exc:
                log.debug("trace: %s", exc)
        try:
            return original_lock(key, *args, **kw)
        except transactionlock.LockBusy as exc:
            if record is not None:
                busy = {"message": str(exc), "stack": _frames(12)}
                match = re.search(r"oid ([0-9a-f]+)", str(exc))
                if match:
                    busy["oid"] = match.group(1)
                    oid = bytes.fromhex(match.group(1))
                    for conn in views.connections_of(txn):
                        obj = conn._cache.get(oid)
                        if obj is not None:
                            busy["object"] = describe_object(obj)
                    lock = record["lock"] or {}
                    busy["changed_before"] = any(o == match.group(1) for o, _ in lock.get("changed_before", []))
                    busy["used_before"] = match.group(1) in used_oids.get(id(record), ())
                try:
                    busy.update(_blocking(txn, used_oids.get(id(record), set())))
                except Exception as error:
                    busy["blocking_error"] = repr(error)
                record.setdefault("busy", []).append(busy)
            raise

    decorator.hold_for_transaction = lock_for_transaction


# -- the logs ---------------------------------------------------------------------------------------------------

RETRIED = re.compile(r"\[Zope\.SiteErrorLog:\d+\]\[[^\]]*\] (\w+) at (\S+): (.*)\. Request will be retried\.$",
                     re.M)
FAILURE = re.compile(r"\[plonesite\.failure:\d+\]\[[^\]]*\] mcl-failure (\S+) (\S+) retry=(\w+) (\w+): (.*)$", re.M)


def retries(log_text: str) -> list[dict]:
    """Products.SiteErrorLog's "<Exc> at <path>: <msg>. Request will be retried." lines, parsed."""
    return [{"exc": m.group(1), "path": m.group(2), "message": m.group(3)} for m in RETRIED.finditer(log_text)]


def failures(log_text: str) -> list[dict]:
    """This harness's per-attempt failure lines (method, path, retried or not, exception, message)."""
    return [{"method": m.group(1), "path": m.group(2), "retry": m.group(3) == "True", "exc": m.group(4),
             "message": m.group(5)} for m in FAILURE.finditer(log_text)]


def conflict_object(message: str) -> tuple[str | None, str | None]:
    """(oid hex, class) named by a ConflictError's or LockBusy's text, where it names them."""
    oid = re.search(r"oid (?:0x)?([0-9a-f]+)", message)
    cls = re.search(r"class ([\w.]+)", message)
    if cls is None:
        cls = re.search(r"oid [0-9a-fx]+, (?:a )?([\w.]+)[:)]", message)
    oid_hex = None
    if oid:
        oid_hex = "%016x" % int(oid.group(1), 16)
    return oid_hex, cls.group(1) if cls else None


if __name__ == "__main__":
    if sys.argv[1] == "template":
        _create_site(sys.argv[2])
    elif sys.argv[1] == "inspect":
        print(json.dumps(_inspect(int(sys.argv[2]), sys.argv[3:])))
    else:
        raise SystemExit("usage: plonesite.py template DIR | inspect ZEO_PORT [OID...]")
