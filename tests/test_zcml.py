"""The ``memcachedlock:lock`` directive and the package's ZCML files, loaded by zope.configuration.

Real memcached, real threads, real ZCML processing; nothing mocked.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time

import pytest
from AccessControl.class_init import InitializeClass
from AccessControl.SecurityInfo import ClassSecurityInfo
from zope.configuration import xmlconfig
from zope.configuration.config import ConfigurationConflictError
from zope.configuration.exceptions import ConfigurationError
from zope.testing.cleanup import cleanUp

from unimr.memcachedlock import registry
from unimr.memcachedlock.keys import lock_name
from unimr.memcachedlock.zope import patch

from introspection import is_locked

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HEADER = """<configure xmlns="http://namespaces.zope.org/zope"
    xmlns:memcachedlock="http://namespaces.zope.org/memcachedlock">
  <include package="unimr.memcachedlock" file="meta.zcml" />
  %s
</configure>"""


def document_key(fun, document, *args, **kw):
    """Lock per document id."""
    return document.id


class Document:
    """A class with a protected method, as Zope code declares it."""

    security = ClassSecurityInfo()
    inside = 0
    most_inside = 0
    calls = 0

    def __init__(self, id: str) -> None:
        self.id = id

    @security.protected("Modify portal content")
    def edit(self, text: str, *, times: int = 1) -> str:
        """Edit the document (the docstring makes it publishable)."""
        cls = type(self)
        cls.inside += 1
        cls.calls += 1
        cls.most_inside = max(cls.most_inside, cls.inside)
        time.sleep(0.01)
        cls.inside -= 1
        return text * times

    def peek(self) -> bool:
        """Whether this document's lock looks free from inside the call."""
        return registry.get_backend().may_be_available(lock_name("test_zcml.Document.peek:" + self.id))


InitializeClass(Document)


class Base:
    def greet(self, who: str) -> str:
        """Say hello."""
        return "hello " + who


class Child(Base):
    """Inherits ``greet``: patching it must not change Base, undoing must restore inheritance."""


@pytest.fixture
def clean():
    """Undo every patch and registration the test made."""
    cleanUp()
    yield
    cleanUp()
    Document.inside = Document.most_inside = Document.calls = 0


def load(body: str):
    return xmlconfig.string(HEADER % body)


def lock_xml(kind: str = "lock", cls: str = "test_zcml.Document", method: str = "edit",
             key: str = "test_zcml.document_key", **extra: str) -> str:
    attrs = "".join(' %s="%s"' % item for item in extra.items())
    return '<memcachedlock:lock class="%s" method="%s" key="%s" kind="%s"%s />' % (cls, method, key, kind, attrs)


@pytest.mark.parametrize("kind", ["lock", "rlock"])
def test_directive_keeps_signature_docstring_roles_and_result(memcached, clean, kind):
    original = Document.__dict__["edit"]
    roles = Document.edit__roles__
    load(lock_xml(kind))
    wrapped = Document.__dict__["edit"]
    assert wrapped is not original
    assert is_locked(Document, "edit")
    assert inspect.signature(Document.edit) == inspect.signature(original)
    assert Document.edit.__doc__ == original.__doc__
    assert Document.edit.__name__ == "edit"
    assert Document.edit__roles__ is roles
    assert Document("d1").edit("ab", times=2) == "abab"


def test_directive_holds_the_lock_while_the_method_runs(memcached, clean):
    load(lock_xml("lock", method="peek"))
    name = lock_name("test_zcml.Document.peek:d1")
    assert registry.get_backend().may_be_available(name)
    assert Document("d1").peek() is False
    assert registry.get_backend().may_be_available(name)


def test_threads_take_turns_per_key(memcached, clean):
    load(lock_xml("lock"))
    docs = [Document("same") for _ in range(6)]
    threads = [threading.Thread(target=doc.edit, args=("x",)) for doc in docs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert Document.calls == 6
    assert Document.most_inside == 1


def test_without_the_patch_threads_overlap(clean):
    """The check above can fail: unpatched, the same calls do overlap."""
    docs = [Document("same") for _ in range(6)]
    threads = [threading.Thread(target=doc.edit, args=("x",)) for doc in docs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert Document.most_inside > 1


def test_shared_name_gives_methods_one_lock(memcached, clean):
    load(lock_xml("lock", name="test_zcml.shared"))
    backend = registry.get_backend()
    seen = []

    def spy(self):
        """Look at the shared lock."""
        seen.append(backend.may_be_available(lock_name("test_zcml.shared:d9")))

    Document.spy = spy
    try:
        load(lock_xml("lock", method="spy", name="test_zcml.shared"))
        Document("d9").spy()
        assert seen == [False]
    finally:
        patch.unlock_method(Document, "spy")
        del Document.spy


def test_undo_restores_the_original(memcached, clean):
    original = Document.__dict__["edit"]
    load(lock_xml("rlock"))
    assert patch.unlock_method(Document, "edit") is True
    assert Document.__dict__["edit"] is original
    assert patch.unlock_method(Document, "edit") is False


def test_inherited_method_patched_on_the_child_only_and_undone(memcached, clean):
    load(lock_xml("rlock", cls="test_zcml.Child", method="greet"))
    assert "greet" in Child.__dict__
    assert "greet" in Base.__dict__ and not is_locked(Base, "greet")
    Child.id = "c"
    try:
        assert Child().greet("you") == "hello you"
    finally:
        del Child.id
    patch.unlock_method(Child, "greet")
    assert "greet" not in Child.__dict__


def test_cleanup_undoes_patches(memcached, clean):
    original = Document.__dict__["edit"]
    load(lock_xml("lock"))
    cleanUp()
    assert Document.__dict__["edit"] is original
    assert patch.patches() == []


def test_repeated_registration_conflicts(memcached, clean):
    with pytest.raises(ConfigurationConflictError) as info:
        load(lock_xml("lock") + lock_xml("rlock"))
    assert "edit" in str(info.value)
    assert not is_locked(Document, "edit")


def test_patching_twice_in_code_is_refused(memcached, clean):
    load(lock_xml("lock"))
    with pytest.raises(ValueError, match="already locked"):
        patch.lock_method(Document, "edit", document_key, "lock")


def test_double_inclusion_is_harmless(memcached, clean, tmp_path):
    snippet = tmp_path / "locks.zcml"
    snippet.write_text(HEADER % lock_xml("lock"))
    xmlconfig.string(HEADER % ('<include file="%s" /><include file="%s" />' % (snippet, snippet)))
    assert len([p for p in patch.patches() if p.cls is Document]) == 1
    assert Document("d2").edit("y") == "y"


@pytest.mark.parametrize("attrs, word", [
    ({"kind": "mutex"}, "mutex"),
    ({"timeout": "-1"}, "-1"),
    ({"interval": "0"}, "0"),
    ({"name": "not a name"}, "not a name"),
    ({"kind": "zlock", "policy": "sometimes"}, "sometimes"),
    ({"kind": "lock", "policy": "on-conflict"}, "on-conflict"),
    ({"kind": "zlock", "policy": "on-conflict", "conflicts": "0"}, "0"),
    ({"kind": "zlock", "policy": "on-conflict", "conflicts": "two"}, "two"),
    ({"kind": "zlock", "policy": "on-conflict", "conflicts": "101"}, "conflicts 101"),
    ({"timeout": "nan"}, "nan"),
    ({"wait": "inf"}, "inf"),
    ({"kind": "zlock", "policy": "always", "conflicts": "3"}, "conflicts=3"),
    ({"kind": "rlock", "conflicts": "3"}, "conflicts"),
])
def test_bad_values_name_the_value(clean, attrs, word):
    kind = attrs.pop("kind", "lock")
    with pytest.raises(ConfigurationError) as info:
        load(lock_xml(kind, **attrs))
    assert word in str(info.value)
    assert patch.patches() == []


def test_missing_method_is_named(clean):
    with pytest.raises(ConfigurationError) as info:
        load(lock_xml("lock", method="no_such_method"))
    assert "no_such_method" in str(info.value)


def test_package_configure_patches_and_registers_nothing(memcached, clean):
    """Safe to auto-include: no patch, no utility; the locks keep the environment's store."""
    from Products.ZCatalog.ZCatalog import ZCatalog
    from zope.component import queryUtility

    from unimr.memcachedlock.interfaces import ILockBackend

    before = dict(vars(ZCatalog))
    xmlconfig.string('<configure xmlns="http://namespaces.zope.org/zope">'
                     '<include package="unimr.memcachedlock" /></configure>')
    assert patch.patches() == []
    assert dict(vars(ZCatalog)) == before
    assert queryUtility(ILockBackend) is None
    backend = registry.get_backend()
    assert backend.kind == "memcached"
    assert memcached.address in repr(backend)


#: The catalog's other writers that catalog.zcml locks under catalog_object's lock.
CATALOG_WRITERS = ("manage_catalogClear", "refreshCatalog", "manage_catalogReindex", "addIndex", "delIndex",
                   "clearIndex", "addColumn", "delColumn", "manage_normalize_paths")


def test_top_level_configure_turns_catalog_locking_on(memcached, clean):
    from Products.ZCatalog.ZCatalog import ZCatalog
    from ZPublisher.HTTPRequest import HTTPRequest

    from unimr.memcachedlock.zope import publisher

    originals = {name: ZCatalog.__dict__[name] for name in ("catalog_object", "uncatalog_object") + CATALOG_WRITERS}
    roles = ZCatalog.catalog_object__roles__
    xmlconfig.file(os.path.join(ROOT, "configure.zcml"))
    for name, original in originals.items():
        assert is_locked(ZCatalog, name)
        assert getattr(ZCatalog, name).__wrapped__ is original
        assert inspect.signature(getattr(ZCatalog, name)) == inspect.signature(original)
    assert ZCatalog.catalog_object__roles__ is roles
    assert {p.name for p in patch.patches()} == {"Products.ZCatalog.ZCatalog.ZCatalog"}
    assert {p.kind for p in patch.patches()} == {"zlock"}
    for method in ("catalog_object", "uncatalog_object"):
        [found] = [p for p in patch.patches() if p.cls is ZCatalog and p.method == method]
        assert found.options.get("policy", "always") == "always" and found.options.get("conflicts", 1) == 1
    assert HTTPRequest.delay_retry is publisher.delay_retry
    # Plone's catalog tool counts writes before it calls ZCatalog's method: it takes the same lock first
    from Products.CMFPlone.CatalogTool import CatalogTool

    plone = {(p.method, p.name, p.options.get("policy", "adaptive")) for p in patch.patches() if p.cls is CatalogTool}
    assert plone == {("catalog_object", "Products.ZCatalog.ZCatalog.ZCatalog", "adaptive"),
                     ("uncatalog_object", "Products.ZCatalog.ZCatalog.ZCatalog", "adaptive")}
    cleanUp()
    assert ZCatalog.__dict__["catalog_object"] is originals["catalog_object"]
    assert not publisher.installed()


ON_CONFLICT_OVERRIDE = """<configure xmlns="http://namespaces.zope.org/zope"
    xmlns:memcachedlock="http://namespaces.zope.org/memcachedlock">
  <include package="unimr.memcachedlock" file="meta.zcml" />
  <memcachedlock:lock class="Products.ZCatalog.ZCatalog.ZCatalog" method="catalog_object"
      key="unimr.memcachedlock.zope.catalog.catalog_key" name="Products.ZCatalog.ZCatalog.ZCatalog"
      kind="zlock" policy="on-conflict" conflicts="3" />
</configure>"""


@pytest.mark.parametrize("retries, warned", [(0, False), (2, True), (3, False)])
def test_fewer_zope_retries_than_conflicts_are_warned_about(memcached, clean, monkeypatch, caplog, retries,
                                                            warned):
    """An on-conflict lock of Zope's 4th try (conflicts=3): say so if zope.conf allows fewer retries."""
    from ZPublisher.HTTPRequest import HTTPRequest

    monkeypatch.setattr(HTTPRequest, "retry_max_count", retries)
    with caplog.at_level(logging.WARNING, logger="unimr.memcachedlock.zope.publisher"):
        xmlconfig.file(os.path.join(ROOT, "configure.zcml"))
        assert [r for r in caplog.records if "max-conflict-retries" in r.getMessage()] == []  # policy always
        cleanUp()
        xmlconfig.string(ON_CONFLICT_OVERRIDE)
    messages = [r.getMessage() for r in caplog.records if "max-conflict-retries" in r.getMessage()]
    assert len(messages) == (1 if warned else 0), messages
    if warned:
        assert "ZCatalog.catalog_object: zlock conflicts=3 but max-conflict-retries is 2" in messages[0]


def test_catalog_zcml_included_twice_is_harmless(memcached, clean):
    xmlconfig.string('<configure xmlns="http://namespaces.zope.org/zope">'
                     '<include package="unimr.memcachedlock" file="catalog.zcml" />'
                     '<include package="unimr.memcachedlock" file="catalog.zcml" />'
                     '<include package="unimr.memcachedlock" />'
                     '</configure>')
    assert len(patch.patches()) == 2 + len(CATALOG_WRITERS) + 2  # the last two: Plone's catalog tool


def test_plone_autoinclude_finds_the_package_and_loads_only_its_configure(memcached, clean):
    """Plone's startup (``autoIncludePlugins``): our meta.zcml and configure.zcml load, catalog.zcml does not.

    plone.autoinclude's own loader includes our distribution's files; the other add-ons it finds beside
    ours (Plone is installed too) are left out, since their ZCML needs all of Plone's loaded first.
    """
    from plone.autoinclude import loader
    from Products.ZCatalog.ZCatalog import ZCatalog
    from zope.component import getUtility
    from zope.configuration import config

    from unimr.memcachedlock.interfaces import ILockBackend

    found = loader.load_packages(target="plone")
    assert "unimr.memcachedlock" in found
    before = dict(vars(ZCatalog))
    context = config.ConfigurationMachine()
    xmlconfig.registerCommonDirectives(context)
    ours = {"unimr.memcachedlock": found["unimr.memcachedlock"]}
    for filename in ("meta.zcml", "configure.zcml"):
        loader.load_configure(context, filename, ours)
    loader.load_overrides(context, "overrides.zcml", ours)
    # usable only if the package's meta.zcml was loaded by autoinclude
    xmlconfig.string('<configure xmlns:memcachedlock="http://namespaces.zope.org/memcachedlock">'
                     '<memcachedlock:store servers="%s" /></configure>' % memcached.address, context=context)
    assert patch.patches() == []
    assert dict(vars(ZCatalog)) == before
    assert registry.get_backend() is getUtility(ILockBackend)


def test_lock_options_are_the_decorators_keywords():
    """Every keyword of lock, rlock and zlock is a directive option (and nothing else is)."""
    from unimr.memcachedlock.decorators import lock, rlock
    from unimr.memcachedlock.zodb import zlock
    from unimr.memcachedlock.zope.directives import ILockOptions

    keywords = set()
    for factory in (lock, rlock, zlock):
        keywords |= {name for name, parameter in inspect.signature(factory).parameters.items()
                     if name != "get_key" and parameter.kind is not parameter.VAR_KEYWORD}
    assert set(ILockOptions.names()) == keywords


def test_wait_bounds_the_wait_for_the_lock(memcached, clean):
    from unimr.memcachedlock import Lock, LockTimeout

    load(lock_xml("lock", wait="0.2"))
    assert patch.patches()[0].options == {"wait": 0.2}
    with Lock("test_zcml.Document.edit:d1"), pytest.raises(LockTimeout, match="test_zcml.Document.edit:d1"):
        Document("d1").edit("x")
    assert Document.calls == 0


@pytest.mark.parametrize("attrs, word", [
    ({"kind": "mutex"}, "mutex"),
    ({"timeout": "-1"}, "-1"),
    ({"interval": "0"}, "0"),
    ({"wait": "0"}, "lock wait"),
    ({"wait": "soon"}, "soon"),
    ({"name": "not a name"}, "not a name"),
    ({"method": "no_such_method"}, "no_such_method"),
    ({"key": "test_zcml.ROOT"}, "is not callable"),
])
def test_bad_lock_options_name_the_file_and_the_line(clean, tmp_path, attrs, word):
    kind = attrs.pop("kind", "lock")
    path = tmp_path / "locks.zcml"
    path.write_text(HEADER % ("\n\n" + lock_xml(kind, **attrs)))
    with pytest.raises(ConfigurationError) as info:
        xmlconfig.file(str(path))
    message = str(info.value)
    assert word in message and str(path) in message and "line 6" in message, message
    assert patch.patches() == []


def other_addon_patch(cls: type, method: str, calls: list) -> tuple:
    """What another add-on does: save the class's method, put its own wrapper in its place."""
    saved = cls.__dict__[method]

    def theirs(self, *args, **kw):
        """Their wrapper."""
        calls.append(self.id)
        return saved(self, *args, **kw)

    setattr(cls, method, theirs)
    return saved, theirs


def undo_other_addon_patch(cls: type, method: str, saved) -> None:
    setattr(cls, method, saved)


def test_undo_ours_keeps_a_patch_applied_on_top(memcached, clean):
    original = Document.__dict__["peek"]
    load(lock_xml("lock", method="peek", name="test_zcml.Document.peek"))
    calls: list = []
    saved, theirs = other_addon_patch(Document, "peek", calls)
    assert Document("d1").peek() is False  # theirs runs ours: locked
    assert patch.unlock_method(Document, "peek") is True
    assert Document.__dict__["peek"] is theirs
    assert Document("d2").peek() is True  # theirs still runs, ours no longer locks
    assert calls == ["d1", "d2"]
    undo_other_addon_patch(Document, "peek", saved)
    assert Document("d3").peek() is True
    cleanUp()
    assert Document("d4").peek() is True and not is_locked(Document, "peek")
    del Document.peek
    Document.peek = original


def test_undo_ours_restores_a_patch_applied_below(memcached, clean):
    original = Document.__dict__["peek"]
    calls: list = []
    saved, theirs = other_addon_patch(Document, "peek", calls)
    load(lock_xml("lock", method="peek", name="test_zcml.Document.peek"))
    assert Document("d1").peek() is False
    assert patch.unlock_method(Document, "peek") is True
    assert Document.__dict__["peek"] is theirs
    assert Document("d2").peek() is True
    assert calls == ["d1", "d2"]
    undo_other_addon_patch(Document, "peek", saved)
    assert Document.__dict__["peek"] is original


def test_the_catalog_patch_says_so_in_one_info_line_per_process(memcached, clean, caplog):
    """Zope copies INFO lines to the console: loading catalog.zcml (thirteen locked methods with Plone
    installed, and the publisher patch) logs two, one for the methods and one for the publisher; the methods
    one by one at debug level."""
    caplog.set_level(logging.DEBUG, logger="unimr.memcachedlock")
    xmlconfig.file(os.path.join(ROOT, "configure.zcml"))
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debugs = [r.getMessage() for r in caplog.records
              if r.levelno == logging.DEBUG and "now runs under" in r.getMessage()]
    assert len(infos) == 2, infos
    assert "now runs under a zlock" in infos[0] and "further locked methods" in infos[0]
    assert "publisher" in infos[1]
    assert len(debugs) == 12, debugs


def lock_actions(body: str) -> list[tuple]:
    """The ``memcachedlock:lock`` actions ``body`` makes, in order, without running them."""
    context = xmlconfig.string(HEADER % body, execute=False)
    return [(action["discriminator"], action["callable"], action["args"], action["kw"])
            for action in context.actions if action["discriminator"][:1] == ("unimr.memcachedlock:lock",)]


def test_a_list_of_methods_is_one_registration_per_method(memcached, clean):
    """``methods="edit peek"`` makes the actions two directives with ``method=`` make, in the same order."""
    listed = lock_actions('<memcachedlock:lock class="test_zcml.Document" methods="edit\n   peek" '
                          'key="test_zcml.document_key" timeout="5" />')
    separate = lock_actions(lock_xml("zlock", timeout="5") + lock_xml("zlock", method="peek", timeout="5"))
    assert listed == separate
    assert [action[0] for action in listed] == [("unimr.memcachedlock:lock", Document, "edit"),
                                                ("unimr.memcachedlock:lock", Document, "peek")]
    load('<memcachedlock:lock class="test_zcml.Document" methods="edit peek" key="test_zcml.document_key" '
         'kind="lock" name="test_zcml.shared" />')
    assert {(p.method, p.name) for p in patch.patches()} == {("edit", "test_zcml.shared"),
                                                             ("peek", "test_zcml.shared")}


def test_overrides_replace_one_method_of_a_list(memcached, clean, tmp_path):
    """A site's overrides.zcml replaces the lock of one method that catalog.zcml locks in a list."""
    overrides = tmp_path / "overrides.zcml"
    overrides.write_text(ON_CONFLICT_OVERRIDE)
    xmlconfig.string('<configure xmlns="http://namespaces.zope.org/zope">'
                     '<include package="unimr.memcachedlock" file="catalog.zcml" />'
                     '<includeOverrides file="%s" /></configure>' % overrides)
    from Products.ZCatalog.ZCatalog import ZCatalog

    options = {p.method: p.options for p in patch.patches() if p.cls is ZCatalog}
    assert options["catalog_object"] == {"policy": "on-conflict", "conflicts": 3}
    assert options["uncatalog_object"] == {} and options["addIndex"] == {"policy": "always"}
    assert len(options) == 2 + len(CATALOG_WRITERS)


@pytest.mark.parametrize("attributes", ['method="edit" methods="edit peek"', 'method="edit" methods="edit"', ""])
def test_method_and_methods_are_one_or_the_other(clean, attributes):
    with pytest.raises(ConfigurationError) as info:
        load('<memcachedlock:lock class="test_zcml.Document" %s key="test_zcml.document_key" />' % attributes)
    message = str(info.value)
    assert "method" in message and "methods" in message and "line 4" in message, message
    assert patch.patches() == []


@pytest.mark.parametrize("methods, word", [
    ("edit 3edit", "3edit"),
    ("edit no_such_method", "no_such_method"),
    ("edit peek edit", "'edit' more than once"),
])
def test_a_bad_method_in_the_list_is_named_at_load(clean, methods, word):
    with pytest.raises(ConfigurationError) as info:
        load('<memcachedlock:lock class="test_zcml.Document" methods="%s" key="test_zcml.document_key" />'
             % methods)
    assert word in str(info.value) and "line 4" in str(info.value), str(info.value)
    assert patch.patches() == []


def test_an_empty_methods_is_left_out(memcached, clean):
    load(lock_xml("lock", methods=" "))
    assert [p.method for p in patch.patches()] == ["edit"]


def test_the_documented_list_form_is_catalog_zcml():
    """docs/zope.rst shows catalog.zcml's first directive as it is in the file."""
    with open(os.path.join(ROOT, "docs", "zope.rst"), encoding="utf-8") as file:
        text = file.read()
    block = text.split("one directive per group that shares a lock and a policy::\n\n", 1)[1].split("\n\n", 1)[0]
    shown = [line.strip() for line in block.splitlines()]
    with open(os.path.join(ROOT, "src", "unimr", "memcachedlock", "catalog.zcml"), encoding="utf-8") as file:
        catalog = [line.strip() for line in file.read().splitlines()]
    assert len(shown) == 6 and any(catalog[i:i + len(shown)] == shown for i in range(len(catalog))), shown
