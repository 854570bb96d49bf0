"""docs/hooks.md against prm_core.hookspecs, and every hook against the tests.

The hookspecs' docstrings are the one source of the reference: the page's part under its
groups is what ``docs/_ext/hook_reference.py`` writes from them, or this fails. In the style
of datasette's documentation tests, the reference has one heading per hook, written as the
hook's signature exactly as the source declares it, and no heading for a hook that does not
exist. Every example on the page is run: it must implement its hook, register against the
real specifications, and run in a real hub without raising. Finally, every hook must be
implemented by some plugin in a test module.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import re
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from attrs import frozen

from prm_core import hookimpl, hookspecs
from prm_core.config import Config
from prm_core.model import FulfillmentRequest, FulfillmentResult, TouchPoint
from prm_core.plugins import make_plugin_manager
from prm_core.privacy.erasure import erase_customer
from prm_core.triggers import MessageResult

if TYPE_CHECKING:
    from collections.abc import Mapping

    from prm_core.model import CustomerView

TESTS = Path(__file__).resolve().parent
DOCS = TESTS.parent / "docs" / "hooks.md"

HOOKS: dict[str, Callable[..., Any]] = {
    name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("prm_")
}
REGISTRATION = {
    "prm_touchpoints": "touchpoints",
    "prm_adapters": "adapters",
    "prm_partners": "partners",
    "prm_value_providers": "value_providers",
    "prm_identity_namespaces": "namespaces",
    "prm_importers": "importers",
    "prm_destination_kinds": "destination_kinds",
}


def _reference_writer() -> types.ModuleType:
    path = TESTS.parent / "docs" / "_ext" / "hook_reference.py"
    spec = importlib.util.spec_from_file_location("hook_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WRITER = _reference_writer()
spec_signature = WRITER.spec_signature
GROUPS = [
    "Registration",
    "The hub's lifetime",
    "Customers",
    "Dialogues",
    "Value delivery",
    "Messages the hub sends on its own initiative",
]


# ---- reading the page ---------------------------------------------------------------------


@frozen
class Section:
    level: int
    title: str
    line: int
    body: tuple[str, ...]

    @property
    def hook(self) -> str | None:
        """The hook a heading names: a code span ``prm_...`` anywhere in its title."""
        match = re.search(r"`(prm_\w+)", self.title)
        return match.group(1) if match else None


@frozen
class Example:
    hook: str
    line: int
    code: str


def read_sections() -> list[Section]:
    """Every heading with the lines under it (up to the next heading of its level or above),
    ignoring ``#`` lines inside fenced code."""
    lines = DOCS.read_text(encoding="utf-8").splitlines()
    heads: list[tuple[int, int, str]] = []
    fenced = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"^(#{1,6}) (.+?)\s*$", line)
        if match and not fenced:
            heads.append((i, len(match.group(1)), match.group(2)))
    sections = []
    for n, (i, level, title) in enumerate(heads):
        end = next((j for j, lvl, _ in heads[n + 1 :] if lvl <= level), len(lines))
        sections.append(Section(level, title, i + 1, tuple(lines[i + 1 : end])))
    return sections


def hook_sections() -> dict[str, list[Section]]:
    found: dict[str, list[Section]] = {}
    for section in read_sections():
        if section.hook is not None:
            found.setdefault(section.hook, []).append(section)
    return found


def examples_of(section: Section) -> list[Example]:
    """The ``python`` code blocks of a hook's section."""
    found, block, start = [], None, 0
    for offset, line in enumerate(section.body, start=1):
        if block is None and line.strip() == "```python":
            block, start = [], section.line + offset + 1
        elif block is not None and line.strip() == "```":
            found.append(Example(section.hook or "", start, "\n".join(block) + "\n"))
            block = None
        elif block is not None:
            block.append(line)
    return found


def all_examples() -> list[Example]:
    return [ex for sections in hook_sections().values() for section in sections for ex in examples_of(section)]


def load(example: Example) -> types.ModuleType:
    """Run an example as a module of its own (named after where it is on the page)."""
    module = types.ModuleType(f"docs_hooks_md_line_{example.line}")
    exec(compile(example.code, f"{DOCS}:{example.line}", "exec"), module.__dict__)
    return module


def implemented(module: types.ModuleType) -> set[str]:
    """The hooks a module implements with ``@hookimpl``."""
    return {name for name, obj in vars(module).items() if name.startswith("prm_") and hasattr(obj, "prm_impl")}


# ---- the page against the specifications ----------------------------------------------------


def test_hooks_are_found_and_declared_with_string_annotations():
    pm = make_plugin_manager((), autoload=False)
    assert set(HOOKS) == {name for name in vars(pm.hook) if name.startswith("prm_")}
    assert len(HOOKS) >= 15
    for name, fn in HOOKS.items():
        assert hasattr(fn, "prm_spec"), f"{name} is not marked @hookspec"
        annotations = [p.annotation for p in inspect.signature(fn).parameters.values()]
        annotations.append(inspect.signature(fn).return_annotation)
        assert all(isinstance(a, str) for a in annotations), f"{name}: annotations are not source strings"


def _sample(view: CustomerView, limit: int = 3, *, cursor: str | None = None) -> Mapping[str, Any] | None:
    """Annotated like the hookspecs: with names imported only for type checking."""


def test_signature_is_built_from_the_source_text():
    assert spec_signature(_sample) == (
        "_sample(view: CustomerView, limit: int = 3, *, cursor: str | None = None) -> Mapping[str, Any] | None"
    )


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_hook_has_one_heading_that_is_its_signature(hook):
    sections = hook_sections().get(hook, [])
    assert len(sections) == 1, f"{hook}: expected one heading in {DOCS.name}, found {len(sections)}"
    (section,) = sections
    expected = f"`{spec_signature(HOOKS[hook])}`"
    assert section.title == expected, f"{DOCS.name}:{section.line} should read: ### {expected}"
    assert section.level == 3, f"{DOCS.name}:{section.line}: a hook heading is ###, under its ## group"


def test_no_heading_for_a_hook_that_does_not_exist():
    unknown = {
        f"{DOCS.name}:{s.line} {s.title}" for name, ss in hook_sections().items() if name not in HOOKS for s in ss
    }
    assert not unknown, f"headings for hooks that do not exist: {sorted(unknown)}"


def test_the_reference_is_written_from_the_hookspecs_docstrings():
    page = DOCS.read_text(encoding="utf-8")
    assert page == WRITER.written(page), f"{DOCS.name} is out of date: run python docs/_ext/hook_reference.py"


def test_hooks_are_grouped_by_theme_in_the_source_and_on_the_page():
    assert [title for title, _ in WRITER.groups()] == GROUPS
    assert sum(len(specs) for _, specs in WRITER.groups()) == len(HOOKS)
    reference = DOCS.read_text(encoding="utf-8").partition(WRITER.MARKER)[2]
    assert [line[3:] for line in reference.splitlines() if line.startswith("## ")] == GROUPS


def test_version_notes_become_directives_of_the_site():
    page = DOCS.read_text(encoding="utf-8")
    (section,) = hook_sections()["prm_hub_started"]
    assert "```{versionadded} 0.2.0" in section.body
    assert ".. versionadded::" not in page
    assert ".. versionadded:: 0.2.0" in (hookspecs.prm_hub_started.__doc__ or "")


def _flag(section: Section, label: str) -> str:
    found = [m.group(1) for line in section.body if (m := re.match(rf"^- \*\*{label}:\*\* (yes|no)\b", line))]
    assert len(found) == 1, f"{DOCS.name}:{section.line}: expected one '- **{label}:** yes|no' line"
    return found[0]


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_section_says_when_and_what_and_whether_first_result_wins(hook):
    (section,) = hook_sections()[hook]
    text = "\n".join(section.body)
    for label in ("Called", "Receives", "Returns"):
        assert f"- **{label}:** " in text, f"{DOCS.name}:{section.line}: no '{label}' line"
    firstresult = HOOKS[hook].prm_spec["firstresult"]  # type: ignore[attr-defined]
    assert _flag(section, "First result wins") == ("yes" if firstresult else "no")
    awaitable = "Awaitable[" in str(inspect.signature(HOOKS[hook]).return_annotation)
    assert _flag(section, "Awaitable") == ("yes" if awaitable else "no")


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_section_examples_implement_the_hook_and_register(hook):
    (section,) = hook_sections()[hook]
    examples = examples_of(section)
    assert examples, f"{DOCS.name}:{section.line}: {hook} has no python example"
    for example in examples:
        module = load(example)
        assert implemented(module) == {hook}, f"{DOCS.name}:{example.line}: implements {implemented(module)}"
        # registering validates the hook's name and the implementation's parameters
        make_plugin_manager([module], autoload=False)


# ---- the examples in a real hub ---------------------------------------------------------------


class Spy:
    """Registers a touch point of its own, plans a fulfillment, answers it, and keeps the
    arguments of every other hook call, to run the page's examples with afterwards."""

    __name__ = "hook-spy"

    def __init__(self) -> None:
        self.calls: dict[str, list[dict[str, Any]]] = {}

    def _saw(self, hook: str, **kwargs: Any) -> None:
        self.calls.setdefault(hook, []).append(kwargs)

    @hookimpl
    def prm_touchpoints(self, config):
        yield TouchPoint(name="hookspy", channel="other", budget_ms=10_000)

    @hookimpl
    def prm_customer_created(self, customer, event):
        self._saw("prm_customer_created", customer=customer, event=event)

    @hookimpl
    def prm_customers_merged(self, merge):
        self._saw("prm_customers_merged", merge=merge)

    @hookimpl
    def prm_customers_unmerged(self, merge):
        self._saw("prm_customers_unmerged", merge=merge)

    @hookimpl
    def prm_enrich_view(self, view):
        self._saw("prm_enrich_view", view=view)

    @hookimpl
    def prm_customer_erased(self, customer_id, merged_ids):
        self._saw("prm_customer_erased", customer_id=customer_id, merged_ids=merged_ids)

    @hookimpl
    def prm_dialogue_opened(self, dialogue, event):
        self._saw("prm_dialogue_opened", dialogue=dialogue, event=event)

    @hookimpl
    def prm_event_recorded(self, recorded):
        self._saw("prm_event_recorded", recorded=recorded)

    @hookimpl
    def prm_event_changes(self, recorded):
        self._saw("prm_event_changes", recorded=recorded)

    @hookimpl
    def prm_dialogue_closed(self, dialogue):
        self._saw("prm_dialogue_closed", dialogue=dialogue)

    @hookimpl
    def prm_propose_offers(self, request):
        self._saw("prm_propose_offers", request=request)

    @hookimpl
    def prm_plan_fulfillment(self, request):
        self._saw("prm_plan_fulfillment", request=request)
        yield FulfillmentRequest(
            id="spy-1", partner="spy-partner", action="note", customer_id=request.event.customer_id
        )

    @hookimpl
    def prm_fulfill(self, request):
        self._saw("prm_fulfill", request=request)
        if request.partner == "spy-partner":
            return self._done(request)
        return None

    async def _done(self, request):
        return FulfillmentResult(request_id=request.id, partner=request.partner, status="confirmed")

    @hookimpl(tryfirst=True)
    def prm_render_delivery(self, delivery, touchpoint):
        self._saw("prm_render_delivery", delivery=delivery, touchpoint=touchpoint)

    @hookimpl
    def prm_fulfillment_updated(self, fulfillment):
        self._saw("prm_fulfillment_updated", fulfillment=fulfillment)

    @hookimpl
    def prm_event_labels(self, config):
        self._saw("prm_event_labels", config=config)
        return {"hookspy.visit": "visited the spy"}

    @hookimpl
    def prm_hub_started(self, hub):
        self._saw("prm_hub_started", hub=hub)

    @hookimpl
    def prm_hub_stopping(self, hub):
        self._saw("prm_hub_stopping", hub=hub)

    @hookimpl
    def prm_send_message(self, message):
        self._saw("prm_send_message", message=message)
        if message.channel == "hookspy":
            return MessageResult("sent", ref="spy-1")
        return None


@pytest.fixture
def spy() -> Spy:
    return Spy()


@pytest.fixture
def hub_config(database_url: str) -> Config:
    # a trigger, so that the scenario sends a message (prm_send_message) through the spy's touch point
    hello = {
        "on": "event.recorded",
        "when": "change['type'] == 'hookspy.hello'",
        "purpose": "transactional",
        "action": {"kind": "message", "channel": "hookspy", "template": "Hello"},
    }
    # the scenario's events are dated on a fixed day: not history to a trigger
    triggers = {"quiet_hours": "none", "poll_s": 0.02, "max_event_age": "366d", "hello": hello}
    return Config(database_url=database_url, public_url="http://hub.test", raw={"triggers": triggers})


@pytest.fixture
def example_modules() -> list[tuple[Example, types.ModuleType]]:
    return [(example, load(example)) for example in all_examples()]


@pytest.fixture
def hub_plugins(spy, example_modules, monkeypatch):
    # only the page's examples and the spy: an installed plugin must not change this test
    monkeypatch.setenv("PRM_DISABLE_PLUGIN_AUTOLOAD", "1")
    return [module for _, module in example_modules] + [spy]


def _event(event_id: str, minute: int, event_type: str = "page", **fields: Any) -> dict[str, Any]:
    return {"id": event_id, "type": event_type, "occurred_at": f"2026-11-23T08:{minute:02d}:00Z", **fields}


async def _settle(value: Any) -> Any:
    if inspect.isawaitable(value):
        value = await value
    if isinstance(value, Iterator):
        value = list(value)
    return value


async def test_examples_run_in_a_hub(hub, spy, example_modules):
    def parse(body: Any) -> list[Any]:
        return hub.parse_events(body, "hookspy")

    ann, phone = {"email": "ann@example.com"}, {"phone": "+1 415 555 0100"}
    await hub.record(parse({"events": [_event("e1", 0, identities=ann), _event("e2", 1, identities=phone)]}))
    await hub.record(parse(_event("e3", 2, identities={**ann, **phone}, data={"outcome": "resolved"})))
    (merge_call,) = spy.calls["prm_customers_merged"]
    await hub.unmerge(merge_call["merge"].id)
    (request,) = parse(_event("r1", 3, "service.request", identities=ann, data={"product_id": "wm-300"}))
    answer = await hub.request(request)
    assert answer.delivery.degraded == (), "an example failed or was late in a request turn"
    await hub.view("email:ann@example.com")
    await hub.record(parse(_event("e4", 4, "hookspy.hello", identities=ann)))
    for _ in range(500):  # the partner's answer and the trigger's message come after the request
        if "prm_fulfillment_updated" in spy.calls and "prm_send_message" in spy.calls:
            break
        await asyncio.sleep(0.02)
    await erase_customer(hub, "email:ann@example.com")

    # the scenario gave every hook real arguments (the hub's stop is the fixture's, after this test) ...
    assert set(spy.calls) == set(HOOKS) - set(REGISTRATION) - {"prm_hub_stopping"}
    spy.calls["prm_hub_stopping"] = [{"hub": hub, "config": hub.config}]
    for example, module in example_modules:
        (hook,) = implemented(module)
        fn = getattr(module, hook)
        if hook in REGISTRATION:  # ... registration examples registered something at start ...
            providers = getattr(hub.registrations, REGISTRATION[hook]).providers.values()
            assert module.__name__ in providers, f"{DOCS.name}:{example.line}: registered nothing"
            continue
        # ... and each example runs on them without raising (the hub would only log it)
        params = inspect.signature(fn).parameters
        for kwargs in spy.calls[hook]:
            await _settle(fn(**{k: v for k, v in kwargs.items() if k in params}))


# ---- every hook has a test ---------------------------------------------------------------------


def _is_hookimpl(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "hookimpl") or (
        isinstance(target, ast.Attribute) and target.attr == "hookimpl"
    )


def implementations_in_tests() -> dict[str, list[str]]:
    """Hook name -> where a test module implements it with ``@hookimpl``.

    This module is left out: its spy implements every hook only to run the page's examples.
    """
    found: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        if path.resolve() == Path(__file__).resolve():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name.startswith("prm_")
                and any(_is_hookimpl(d) for d in node.decorator_list)
            ):
                found.setdefault(node.name, []).append(f"{path.relative_to(TESTS)}:{node.lineno}")
    return found


def test_every_hook_is_implemented_in_a_test():
    found = implementations_in_tests()
    untested = sorted(set(HOOKS) - set(found))
    assert not untested, f"hooks no test module implements: {', '.join(untested)}"
