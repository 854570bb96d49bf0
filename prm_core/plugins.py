"""Plugin loading and the typed registry of what plugins register.

No plugin manager exists at import time: :func:`make_plugin_manager` builds one.
Environment switches:

- ``PRM_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry-point plugin (only those passed in);
- ``PRM_DISABLED_PLUGINS=a,b``: skip these entry-point names;
- ``PRM_TRACE_PLUGINS=1``: log every hook call with its plugin and duration.

Every hook call goes through pluggy: the core calls each plugin's implementation through
:meth:`PrmPluginManager.callers` (a pluggy caller per plugin, so pluggy's monitoring, and
with it ``PRM_TRACE_PLUGINS``, sees every call), which lets one plugin's failure be caught
and named without keeping the others from being called.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import re
import time
import types
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import pluggy
import structlog
from attrs import define, field, frozen

from . import hookspecs
from .config import Config
from .errors import ConflictingRegistration, PluginLoadError
from .feed.builtin import builtin_destination_kinds
from .feed.destinations import DestinationKind
from .formats import Importer
from .identity import builtin_namespaces
from .model import Adapter, IdentityNamespace, Partner, TouchPoint, ValueProvider

__all__ = [
    "ENTRY_POINT_GROUP",
    "PrmPluginManager",
    "Registrations",
    "Registry",
    "builtin_plugins",
    "collect_registrations",
    "make_plugin_manager",
    "plugin_label",
]

ENTRY_POINT_GROUP = "prm"
# the distribution this project ships as: its entry points are the built-in plugins
BUILTIN_DISTRIBUTION = "prm-hub"
log = structlog.get_logger(__name__)
T = TypeVar("T")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class PrmPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers which distribution each entry-point plugin came from,
    and calls each plugin's implementation of a hook on its own (:meth:`callers`)."""

    def __init__(self) -> None:
        super().__init__("prm")
        self.distributions: dict[str, str] = {}
        # entry-point plugins not loaded because a package they import is not installed:
        # name -> the missing package and how to install it (``prm plugins`` lists them)
        self.skipped: dict[str, str] = {}
        # hook name -> (plugin name, caller) in call order; rebuilt after any (un)registration
        self._callers: dict[str, tuple[tuple[str, pluggy.HookCaller], ...]] = {}

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register ``plugin`` (pluggy's ``register``), refusing wrapper implementations.

        A wrapper (``hookwrapper=True`` or ``wrapper=True``) wraps one pluggy call of every
        implementation, but the hub makes one call per plugin: refused with
        :class:`pluggy.PluginValidationError` naming the plugin rather than silently run
        around a single plugin's implementation. An implementation of ``prm_hub_stopping``
        taking ``config`` draws a :class:`DeprecationWarning` naming the plugin.
        """
        label = name or self.get_canonical_name(plugin)
        for attr in dir(plugin):
            opts = self.parse_hookimpl_opts(plugin, attr)
            if opts is not None and (opts.get("wrapper") or opts.get("hookwrapper")):
                hook = opts.get("specname") or attr
                raise pluggy.PluginValidationError(
                    plugin,
                    f"plugin {label!r}: its {hook} is a wrapper implementation, which the hub does not support "
                    "(the hub calls each plugin's implementation on its own, so that one plugin's failure is "
                    "caught and named without stopping the others); implement the hook without wrapper=True",
                )
        registered = super().register(plugin, name)
        self._callers.clear()
        if registered is not None:
            _warn_deprecated(self, plugin, registered)
        return registered

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any | None:
        removed = super().unregister(plugin, name)
        self._callers.clear()
        return removed

    def add_hookspecs(self, module_or_class: types.ModuleType | type) -> None:
        super().add_hookspecs(module_or_class)
        self._callers.clear()

    def callers(self, name: str) -> tuple[tuple[str, pluggy.HookCaller], ...]:
        """``(plugin name, caller)`` for each plugin implementing hook ``name``, in pluggy's
        call order (``tryfirst`` first, then the most recently registered first).

        Calling ``caller(**kwargs)`` runs that plugin's implementation through pluggy (its
        hook call monitoring included) and returns pluggy's list of its non-``None`` results.
        """
        found = self._callers.get(name)
        if found is None:
            impls = list(reversed(getattr(self.hook, name).get_hookimpls()))
            plugins = list(dict.fromkeys(impl.plugin for impl in impls))  # one caller per plugin
            found = tuple(
                (
                    self.get_name(plugin) or repr(plugin),
                    self.subset_hook_caller(name, [other for other in plugins if other is not plugin]),
                )
                for plugin in plugins
            )
            self._callers[name] = found
        return found


def make_plugin_manager(plugins: Sequence[Any] = (), *, autoload: bool | None = None) -> PrmPluginManager:
    """Build the plugin manager: hookspecs, entry-point plugins of group ``prm``, then ``plugins``.

    A plugin that fails to import raises :class:`PluginLoadError` naming it and its
    distribution, except one that imports a package that is not installed (a vendor SDK its
    extra brings): it is skipped with one warning naming it, the package and the install
    command, and listed in ``pm.skipped``. Ends with ``check_pending()`` so a misspelled hook fails at start.
    """
    pm = PrmPluginManager()
    pm.add_hookspecs(hookspecs)
    if autoload is None:
        autoload = not _truthy("PRM_DISABLE_PLUGIN_AUTOLOAD")
    if autoload:
        disabled = {p.strip() for p in os.environ.get("PRM_DISABLED_PLUGINS", "").split(",") if p.strip()}
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in disabled or pm.get_plugin(ep.name) is not None:
                continue
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "(unknown distribution)"
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except ModuleNotFoundError as exc:
                missing = _missing_dependency(exc, ep)
                if missing is None:  # the plugin's own code (or the core's) is missing: a broken install
                    raise PluginLoadError(ep.name, dist, f"{type(exc).__name__}: {exc}") from exc
                install = _install_hint(missing, ep.dist)
                pm.skipped[ep.name] = f"needs {missing!r}, not installed ({install})"
                # one line, no traceback: an optional part the install left out, not an error
                log.warning(
                    "plugin skipped: a package it imports is not installed",
                    plugin=ep.name,
                    distribution=dist,
                    missing=missing,
                    install=install,
                )
                continue
            except Exception as exc:
                raise PluginLoadError(ep.name, dist, f"{type(exc).__name__}: {exc}") from exc
            pm.distributions[ep.name] = dist
    for plugin in plugins:
        # a readable name (it shows in `degraded` and in errors) rather than pluggy's id number
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        pm.register(plugin, name=None if pm.has_plugin(name) else name)
    pm.check_pending()
    if _truthy("PRM_TRACE_PLUGINS"):
        _trace(pm)
    return pm


def builtin_plugins() -> list[Any]:
    """The built-in plugins, loaded: the ``prm`` entry points of the prm-hub distribution only.

    For what must not change with whatever else is installed in the environment (the
    project's documentation build, ``prm demo``): they pass these with ``autoload=False``,
    so a third-party plugin installed alongside does not appear in them.
    """
    return [
        ep.load()
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        if ep.dist is not None and _normalized(ep.dist.name) == BUILTIN_DISTRIBUTION
    ]


def _missing_dependency(exc: ModuleNotFoundError, ep: importlib.metadata.EntryPoint) -> str | None:
    """The top-level package a plugin imports that is not installed, or None when what is
    missing is the plugin's own package or the core (a broken install, not an optional part)."""
    if not exc.name:
        return None
    top = exc.name.partition(".")[0]
    if top in {ep.module.partition(".")[0], "prm_core"}:
        return None
    return top


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _install_hint(package: str, dist: importlib.metadata.Distribution | None) -> str:
    """``pip install 'prm-hub[pos]'`` when the plugin's distribution has an extra for the
    package, else ``pip install`` of the requirement it declares, else of the package's name."""
    plain = None
    for requirement in (dist.requires or []) if dist is not None else []:
        spec, _, marker = requirement.partition(";")
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if name is None or _normalized(name.group(1)) != _normalized(package):
            continue
        extra = re.search(r"extra\s*==\s*[\"']([^\"']+)[\"']", marker)
        if extra is not None and dist is not None:
            return f"pip install '{dist.name}[{extra.group(1)}]'"
        plain = spec.strip().replace(" ", "")
    return f"pip install '{plain or package}'"


def _trace(pm: pluggy.PluginManager) -> None:
    """Log every hook call with the plugins that answered and how long it took."""
    started: dict[int, float] = {}

    def before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        started[id(kwargs)] = time.perf_counter()

    def after(
        outcome: pluggy.Result[Any], hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]
    ) -> None:
        elapsed = (time.perf_counter() - started.pop(id(kwargs), time.perf_counter())) * 1000
        log.debug(
            "hook call",
            hook=hook_name,
            plugins=[impl.plugin_name for impl in impls],
            elapsed_ms=round(elapsed, 3),
            failed=outcome.exception is not None,
        )

    pm.add_hookcall_monitoring(before, after)


def plugin_label(pm: pluggy.PluginManager, plugin: object) -> str:
    """``name (distribution version)`` for messages that must say who did something."""
    name = pm.get_name(plugin) or repr(plugin)
    dist = pm.distributions.get(name) if isinstance(pm, PrmPluginManager) else None
    return f"{name} ({dist})" if dist else name


@define
class Registry(Generic[T]):
    """Registered things of one kind by name, each remembering which plugin gave it."""

    kind: str
    items: dict[str, T] = field(factory=dict)
    providers: dict[str, str] = field(factory=dict)

    def add(self, name: str, item: T, provider: str) -> None:
        if name in self.items:
            raise ConflictingRegistration(self.kind, name, self.providers[name], provider)
        self.items[name] = item
        self.providers[name] = provider

    def __getitem__(self, name: str) -> T:
        return self.items[name]

    def get(self, name: str) -> T | None:
        return self.items.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.items

    def __iter__(self) -> Any:
        return iter(self.items.values())

    def __len__(self) -> int:
        return len(self.items)

    def names(self) -> list[str]:
        return sorted(self.items)


@frozen
class Registrations:
    """Everything registered by plugins, collected once at start."""

    touchpoints: Registry[TouchPoint]
    adapters: Registry[Adapter]
    partners: Registry[Partner]
    value_providers: Registry[ValueProvider]
    namespaces: Registry[IdentityNamespace]
    importers: Registry[Importer] = field(factory=lambda: Registry("importer"))
    destination_kinds: Registry[DestinationKind] = field(factory=lambda: Registry("destination kind"))


def _collect(
    pm: PrmPluginManager,
    hook_name: str,
    kind: str,
    expected: type[T],
    config: Config,
    registry: Registry[T],
) -> None:
    # registration order: the first registered is named first
    for name, caller in reversed(pm.callers(hook_name)):
        provider = plugin_label(pm, pm.get_plugin(name))
        try:
            items = [item for produced in caller(config=config) for item in (produced or ())]
        except (ValueError, TypeError) as exc:
            raise PluginLoadError(name, provider, f"{hook_name}: {exc}") from exc
        for item in items:
            if not isinstance(item, expected):
                raise PluginLoadError(
                    name, provider, f"{hook_name} yielded {type(item).__name__}, expected {expected.__name__}"
                )
            registry.add(item.name, item, provider)  # type: ignore[attr-defined]


def _warn_deprecated(pm: PrmPluginManager, plugin: object, name: str) -> None:
    """A :class:`DeprecationWarning` naming the plugin, pointing at its code, for each of its
    implementations taking a parameter of ``hookspecs.DEPRECATED_PARAMETERS``."""
    for hook_name, parameters in hookspecs.DEPRECATED_PARAMETERS.items():
        hook = getattr(pm.hook, hook_name, None)
        for impl in hook.get_hookimpls() if hook is not None else ():
            if impl.plugin is not plugin:
                continue
            for parameter in sorted(set(parameters) & set(impl.argnames)):
                code = getattr(inspect.unwrap(impl.function), "__code__", None)
                warnings.warn_explicit(
                    f"plugin {name!r}: the {parameter!r} parameter of {hook_name} is {parameters[parameter]}",
                    DeprecationWarning,
                    filename=code.co_filename if code else "<unknown>",
                    lineno=code.co_firstlineno if code else 0,
                    module=getattr(impl.function, "__module__", None) or name,
                )


def collect_registrations(pm: PrmPluginManager, config: Config) -> Registrations:
    """Call every registration hook once, refusing duplicate names (naming both providers)."""
    namespaces: Registry[IdentityNamespace] = Registry("identity namespace")
    for ns in builtin_namespaces():
        namespaces.add(ns.name, ns, "prm_core")
    regs = Registrations(
        touchpoints=Registry("touch point"),
        adapters=Registry("adapter"),
        partners=Registry("partner"),
        value_providers=Registry("value provider"),
        namespaces=namespaces,
    )
    _collect(pm, "prm_touchpoints", "touch point", TouchPoint, config, regs.touchpoints)
    _collect(pm, "prm_adapters", "adapter", Adapter, config, regs.adapters)
    for adapter in regs.adapters:
        if adapter.touchpoint not in regs.touchpoints:
            raise PluginLoadError(
                adapter.name,
                regs.adapters.providers[adapter.name],
                f"adapter {adapter.name!r} needs touch point {adapter.touchpoint!r}, which no plugin registers",
            )
    _collect(pm, "prm_partners", "partner", Partner, config, regs.partners)
    _collect(pm, "prm_value_providers", "value provider", ValueProvider, config, regs.value_providers)
    _collect(pm, "prm_identity_namespaces", "identity namespace", IdentityNamespace, config, regs.namespaces)
    _collect(pm, "prm_importers", "importer", Importer, config, regs.importers)
    for kind in builtin_destination_kinds():
        regs.destination_kinds.add(kind.name, kind, "prm_core")
    _collect(pm, "prm_destination_kinds", "destination kind", DestinationKind, config, regs.destination_kinds)
    return regs


def hook_implementations(pm: pluggy.PluginManager) -> dict[str, list[str]]:
    """Plugin name -> the hooks it implements, for ``prm plugins``."""
    result: dict[str, list[str]] = {}
    for name, hook in vars(pm.hook).items():
        if not name.startswith("prm_"):
            continue
        for impl in hook.get_hookimpls():
            result.setdefault(pm.get_name(impl.plugin) or "?", []).append(name)
    return {k: sorted(v) for k, v in result.items()}
