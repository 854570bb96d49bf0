"""The ``prm`` command."""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .config import Config, load_config
from .errors import ConfigError, InvalidInput, PrmError

__all__ = ["main"]

T = TypeVar("T")

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="TOML config (default: $PRM_CONFIG or ./prm.toml)"
)
database_option = click.option("--database", "database_url", help="database URL (default: $PRM_DATABASE_URL, config)")


def _config(config_path: str | None, database_url: str | None) -> Config:
    try:
        return load_config(config_path, database_url=database_url)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def configure_logging(level: str = "info", **options: Any) -> None:
    """:func:`prm_core.logs.configure_logging`, imported when a command runs: ``prm --help``
    does not need structlog (nor asyncio, nor the database layer, imported where used)."""
    from .logs import configure_logging as configure

    configure(level, **options)


def _run(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    import asyncio

    import sqlalchemy as sa

    try:
        return asyncio.run(factory())
    except PrmError as exc:
        raise click.ClickException(str(exc)) from exc
    except (OSError, sa.exc.DBAPIError) as exc:
        # the database is unreachable or refuses us: say so, without a traceback
        raise click.ClickException(f"the database cannot be used: {type(exc).__name__}: {exc}") from exc


async def _migrate(config: Config) -> list[str]:
    from .store import Store

    store = Store.open(config.database_url)
    try:
        return await store.migrate()
    finally:
        await store.dispose()


class _Commands(click.Group):
    """``prm``'s own commands, plus those installed distributions add through the
    ``prm.commands`` entry points (as Flask's ``flask.commands``): ``prm demo`` comes from the
    ``prm_demo`` package this way. They are imported only when run: ``prm --help`` lists them
    with the first line of their docstring read from the source, so listing commands does not
    import the demo and everything it uses."""

    @staticmethod
    def _installed() -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group="prm.commands")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._installed()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in (installed := self._installed()):
            loaded = _load_command(installed[name])
            command = loaded if isinstance(loaded, click.Command) else None
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        installed = self._installed()  # read once: scanning every distribution's metadata is the slow part
        rows = []
        for name in sorted({*super().list_commands(ctx), *installed}):
            own = super().get_command(ctx, name)
            limit = formatter.width - 6 - len(name)
            if own is not None:
                if not own.hidden:
                    rows.append((name, own.get_short_help_str(limit)))
            else:
                # shortened as click shortens its own commands' help, without loading the command
                rows.append((name, click.Command(name, help=_summary(installed[name])).get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _load_command(ep: Any) -> Any:
    """The command an entry point names; a package it needs that is not installed is one line."""
    try:
        return ep.load()
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if not missing or missing in {ep.module.partition(".")[0], "prm_core"}:
            raise
        from .plugins import _install_hint

        raise click.ClickException(
            f"prm {ep.name} needs the package {missing!r}, which is not installed: {_install_hint(missing, ep.dist)}"
        ) from exc


def _summary(ep: Any) -> str:
    """The first line of the docstring of the function an entry point names, read from its
    module's source without importing it (``prm --help`` stays fast); else where it comes from."""
    import ast
    import importlib.util

    fallback = f"(from {ep.dist.name})" if ep.dist is not None else ""
    try:
        spec = importlib.util.find_spec(ep.module)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            return fallback
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (ImportError, OSError, SyntaxError, ValueError):
        return fallback
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == ep.attr:
            doc = ast.get_docstring(node)
            return doc.strip().splitlines()[0] if doc else fallback
    return fallback


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="prm")
def main() -> None:
    """The PRM hub: every customer touch point plugged into one core."""


@main.command()
@config_option
@database_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8700, show_default=True, type=int)
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning"]))
@click.option("--strict", is_flag=True, help="refuse to start when the config has an unknown table or key")
@click.option(
    "--processors",
    type=click.IntRange(0, 64),
    default=None,
    help="journal processors in processes of their own (0: in the server process)  [default: 1 with the journal on]",
)
def serve(
    config_path: str | None,
    database_url: str | None,
    host: str,
    port: int,
    log_level: str,
    strict: bool,
    processors: int | None,
) -> None:
    """Run the hub with every installed plugin (migrates an empty database on start)."""
    import sqlalchemy as sa
    from aiohttp import web

    from .server.app import create_app

    config = _config(config_path, database_url)
    configure_logging(log_level, cache=True)
    processors = _check_processors(config, processors)
    try:
        # a bad setting stops here, before anything is written
        app = create_app(config, owns_process=True, journal_processor="elsewhere" if processors else "here")
    except PrmError as exc:
        raise click.ClickException(str(exc)) from exc
    _check_config(config, strict=strict)
    # the port is taken before the hub starts: a port in use is one line, not a started hub's traceback
    sock = _listen(host, port)
    _run(lambda: _migrate(config))  # fail here, plainly, if the database is unusable
    supervisor = _Processors(lambda: _start_processor(config_path, config, log_level), processors)
    click.echo(f"prm hub on http://{host}:{port} (database {sa.make_url(config.database_url).render_as_string()})")
    try:
        web.run_app(app, sock=sock, access_log=None, print=None)
    except PrmError as exc:  # a setting checked as the hub starts ([tiers.rules], [planning]): no traceback
        raise click.ClickException(str(exc)) from exc
    except (OSError, sa.exc.DBAPIError) as exc:
        raise click.ClickException(f"the hub could not start: {type(exc).__name__}: {exc}") from exc
    finally:
        supervisor.stop()


def _check_processors(config: Config, processors: int | None) -> int:
    """How many ``prm process`` to start: as asked, else one when the journal is on."""
    from .journal import JournalSettings

    try:
        enabled = JournalSettings.from_config(config.section("ingest")).enabled
    except PrmError as exc:
        raise click.ClickException(str(exc)) from exc
    if processors is None:
        return 1 if enabled else 0
    if processors and not enabled:
        raise click.ClickException("--processors needs the journal, which [ingest] journal = false turns off")
    if processors > 1 and config.database_url.startswith("sqlite"):
        raise click.ClickException(
            f"--processors {processors}: SQLite takes one journal processor (its writes are one at a time); "
            "use --processors 1, or PostgreSQL"
        )
    return processors


class _Processors:
    """``prm serve --processors N``: N ``prm process`` children, each started again if it
    exits (a crash, a kill) while the server runs; terminated when the server stops."""

    def __init__(self, start: Callable[[], subprocess.Popen[bytes]], count: int) -> None:
        import threading

        self._start = start
        self._children = [start() for _ in range(count)]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="prm-processors", daemon=True)
        if count:
            self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            for i, child in enumerate(self._children):
                if child.poll() is not None and not self._stopping.is_set():
                    click.echo(f"journal processor {child.pid} exited ({child.returncode}); starting another", err=True)
                    self._children[i] = self._start()

    def stop(self) -> None:
        # the children go first: one the watching thread started dies with that thread
        # (PR_SET_PDEATHSIG), and should rather finish its batch on SIGTERM
        self._stopping.set()
        for child in self._children:
            child.terminate()
        for child in self._children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        if self._thread.is_alive():
            self._thread.join()


def _start_processor(config_path: str | None, config: Config, log_level: str) -> subprocess.Popen[bytes]:
    """``prm process`` beside this server, ended with it (SIGTERM as the server stops; the
    kernel's SIGKILL if the server dies first)."""
    args = [sys.executable, "-m", "prm_core.cli", "process", "--database", config.database_url]
    args += ["--log-level", log_level]
    if config_path:
        args += ["--config", config_path]
    return subprocess.Popen(args, preexec_fn=functools.partial(_die_with_parent, os.getpid()))  # our own command


def _die_with_parent(parent: int) -> None:
    """In the child, before it runs: SIGKILL when the parent exits (Linux's PR_SET_PDEATHSIG).
    A parent that died before the child asked for it sends nothing: the child, now another
    process's, ends at once rather than run on unwatched."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the server's SIGTERM on exit still ends it
        return
    if os.getppid() != parent:
        os._exit(1)


@main.command()
@config_option
@database_option
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning"]))
def process(config_path: str | None, database_url: str | None, log_level: str) -> None:
    """Process the journal ([ingest] journal = true) until stopped: what prm serve --processors
    starts. Several may run against PostgreSQL (on several machines): they take turns, and no
    event is processed twice."""
    import structlog

    from .hub import Hub

    config = _config(config_path, database_url)
    configure_logging(log_level, cache=True)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with Hub.open(config, autoload=True, journal_processor="only"):
            # the process is this processor's alone: as prm serve does (prm_core.server.app's
            # _freeze_heap), what start-up left is moved out of the collector's sight, so the
            # collections a batch's objects cause walk those objects, not the whole heap again
            freeze = config.flag("server", "freeze_heap", True)
            if freeze:
                gc.collect()
                gc.freeze()
                structlog.get_logger(__name__).debug("heap frozen", objects=gc.get_freeze_count())
            try:
                await stop.wait()
            finally:
                if freeze:
                    gc.unfreeze()

    try:
        asyncio.run(run())
    except PrmError as exc:
        raise click.ClickException(str(exc)) from exc


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a one-line error saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family = infos[0][0]
        return socket.create_server((host, port), family=family, backlog=128)
    except socket.gaierror as exc:
        raise click.ClickException(f"--host {host}: not an address this machine has ({exc.strerror})") from exc
    except OSError as exc:
        import errno

        if exc.errno == errno.EADDRINUSE:
            raise click.ClickException(
                f"port {port} on {host} is in use by another program; stop it or choose another --port"
            ) from exc
        if exc.errno == errno.EACCES:
            raise click.ClickException(f"port {port} on {host} needs privileges; choose a port above 1023") from exc
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _check_config(config: Config, *, strict: bool) -> None:
    """Warn about each table or key nothing reads (a typo), with the nearest known name;
    with ``strict``, stop instead."""
    from .config_check import config_warnings
    from .plugins import collect_registrations, make_plugin_manager

    try:
        touchpoints = collect_registrations(make_plugin_manager(), config).touchpoints.names()
    except PrmError as exc:
        raise click.ClickException(str(exc)) from exc
    found = config_warnings(config, touchpoints)
    where = f"{config.source}: " if config.source else ""
    if found and strict:
        raise click.ClickException(f"{where}{found[0]}" + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""))
    for line in found:
        click.echo(f"Warning: {where}{line}", err=True)


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--scope", required=True, help="admin, read, touchpoint:<name> or partner:<name>")
@click.option("--name", default="", help="a label for the key")
@click.option(
    "--public",
    is_flag=True,
    help="a browser key (only for a touch point browsers send to, e.g. touchpoint:web): it only sends events",
)
@config_option
@database_option
def keys_create(scope: str, name: str, public: bool, config_path: str | None, database_url: str | None) -> None:
    """Create an API key; prints it alone on the last line. Only its hash is stored."""
    from .keys import create_key, validate_scope
    from .store import Store

    try:
        validate_scope(scope)
    except InvalidInput as exc:
        raise click.BadParameter(str(exc), param_hint="--scope") from exc
    config = _config(config_path, database_url)

    browser_touchpoints = None
    if scope.startswith(("touchpoint:", "partner:")):
        from .keys import check_scope_target
        from .plugins import make_plugin_manager

        try:
            # only the touch points: adapters and partners read settings (secrets) a key does not need
            registered = [tp for found in make_plugin_manager().hook.prm_touchpoints(config=config) for tp in found]
        except PrmError as exc:
            raise click.ClickException(str(exc)) from exc
        try:
            check_scope_target(scope, [tp.name for tp in registered], list(config.section("partners")))
        except InvalidInput as exc:
            raise click.BadParameter(str(exc), param_hint="--scope") from exc
        browser_touchpoints = {tp.name for tp in registered if tp.public_keys}

    async def create() -> str:
        store = Store.open(config.database_url)
        try:
            await store.migrate()
            key, record = await create_key(
                store, scope, name=name, public=public, public_touchpoints=browser_touchpoints
            )
        finally:
            await store.dispose()
        click.echo(
            f"created key {record.id} with scope {scope}{' (public)' if public else ''}; it is shown once:", err=True
        )
        return key

    click.echo(_run(create))


@keys.command("list")
@click.option("--active", is_flag=True, help="only keys that are not revoked")
@click.option("--json", "as_json", is_flag=True, help="one JSON array instead of a table")
@config_option
@database_option
def keys_list(active: bool, as_json: bool, config_path: str | None, database_url: str | None) -> None:
    """List keys: id, scope, name, public, created, revoked. Never a secret or its hash."""
    from .keys import list_keys
    from .store import Store

    config = _config(config_path, database_url)

    async def read() -> list[Any]:
        store = Store.open(config.database_url)
        try:
            await store.migrate()
            return await list_keys(store, include_revoked=not active)
        finally:
            await store.dispose()

    found = _run(read)
    if as_json:
        click.echo(json.dumps([k.to_json() for k in found], indent=2))
        return
    if not found:
        click.echo("no keys yet; create one with: prm keys create --scope admin")
        return

    def when(value: Any) -> str:
        return value.strftime("%Y-%m-%d %H:%M") if value else "-"

    rows = [(k.id, k.scope, k.name or "-", "yes" if k.public else "no", when(k.created_at), when(k.revoked_at))
            for k in found]  # fmt: skip
    _table(("id", "scope", "name", "public", "created", "revoked"), rows)


@keys.command("revoke")
@click.argument("key_id")
@config_option
@database_option
def keys_revoke(key_id: str, config_path: str | None, database_url: str | None) -> None:
    """Revoke a key by its id (the part after prm_); takes effect within seconds."""
    from .keys import revoke_key
    from .store import Store

    config = _config(config_path, database_url)

    async def revoke() -> bool:
        store = Store.open(config.database_url)
        try:
            await store.migrate()
            return await revoke_key(store, key_id)
        finally:
            await store.dispose()

    if not _run(revoke):
        raise click.ClickException(f"no active key {key_id}")
    click.echo(f"revoked {key_id}")


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="one JSON document instead of text")
def plugins(config_path: str | None, as_json: bool) -> None:
    """List installed plugins, what each registers and the hooks each implements."""
    from .plugins import collect_registrations, hook_implementations, make_plugin_manager

    config = _config(config_path, None)
    configure_logging("warning")  # a skipped plugin's line goes to standard error, not into --json
    try:
        pm = make_plugin_manager()
        regs = collect_registrations(pm, config)
    except PrmError as exc:
        raise click.ClickException(str(exc)) from exc
    hooks = hook_implementations(pm)
    listed: list[dict[str, Any]] = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda p: p[0]):
        if plugin is None:
            continue
        dist = pm.distributions.get(name, "(registered in code)")
        entry: dict[str, Any] = {"name": name, "distribution": str(dist), "hooks": hooks.get(name, [])}
        listed.append(entry)
        if not as_json:
            click.echo(f"{name}  {dist}")
        for kind, registry in (
            ("touch points", regs.touchpoints),
            ("adapters", regs.adapters),
            ("partners", regs.partners),
            ("value providers", regs.value_providers),
            ("identity namespaces", regs.namespaces),
            ("importers", regs.importers),
            ("destination kinds", regs.destination_kinds),
        ):
            mine = [n for n in registry.names() if registry.providers[n].split(" ")[0] == name]
            entry[kind.replace(" ", "_")] = mine
            if mine and not as_json:
                details = (
                    [f"{n} ({regs.touchpoints[n].budget_ms} ms)" for n in mine] if kind == "touch points" else mine
                )
                if kind == "importers":
                    found = [regs.importers[n] for n in mine]
                    details = [f"{i.name} ({' '.join(i.suffixes)} into {i.touchpoint})" for i in found]
                click.echo(f"  {kind}: {', '.join(details)}")
        if not as_json:
            click.echo(f"  hooks: {', '.join(hooks.get(name, [])) or '-'}")
    from .planning import Planner
    from .planning.knowledge import catalog_provider, knowledge_registry

    try:
        planner = Planner.from_config(config)
        if planner.catalog.items and "catalog" not in regs.value_providers:
            regs.value_providers.add("catalog", catalog_provider(planner.catalog), "prm_core.planning")
        knowledge = knowledge_registry(config, regs)
    except PrmError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        document = {"plugins": listed, "skipped": pm.skipped, "knowledge": knowledge}
        click.echo(json.dumps(document, indent=2, default=str))
        return
    for name, why in sorted(pm.skipped.items()):
        click.echo(f"{name}  skipped: {why}")
    if knowledge:
        click.echo("knowledge artifacts (value providers, and the touch points that use them):")
        for k in knowledge:
            click.echo(
                f"  {k['name']}  about the {k['about']}, from {k['plugin']}: {', '.join(k['touchpoints']) or '-'}"
            )
            if k["description"]:
                click.echo(f"    {k['description']}")
    click.echo("destination kinds ([destinations.NAME] kind = ...):")
    for kind in regs.destination_kinds:
        click.echo(f"  {kind.name}  from {regs.destination_kinds.providers[kind.name]}: {kind.about or '-'}")


@main.group()
def db() -> None:
    """The database."""


@db.command("upgrade")
@config_option
@database_option
def db_upgrade(config_path: str | None, database_url: str | None) -> None:
    """Apply pending migrations."""

    config = _config(config_path, database_url)

    applied = _run(lambda: _migrate(config))
    click.echo(f"applied {', '.join(applied)}" if applied else "the database is up to date")


@main.group()
def plan() -> None:
    """Relationship planning: fit the value model, re-evaluate tiers (docs/planning.md)."""


@plan.command("fit")
@config_option
@database_option
def plan_fit(config_path: str | None, database_url: str | None) -> None:
    """Fit BG/NBD, Gamma-Gamma and the RFM quintiles over the customers' value rows."""
    try:
        from .planning.fit import fit_value_model
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] not in {"numpy", "scipy"}:
            raise
        from .planning.clv import PLANNING_MISSING

        raise click.ClickException(f"prm plan fit needs the value model's libraries: {PLANNING_MISSING}") from exc
    from .planning.money import Money
    from .store import Store
    from .store.tables import utcnow

    config = _config(config_path, database_url)
    try:
        money = Money.from_config(config)
    except PrmError as exc:
        raise click.ClickException(str(exc)) from exc

    async def fit() -> dict[str, Any]:
        store = Store.open(config.database_url)
        try:
            await store.migrate()
            return await fit_value_model(store, utcnow(), money)
        finally:
            await store.dispose()

    result = _run(fit)
    click.echo(f"{result['customers']} customers with a purchase, spend in {money.currency}")
    if result["left_out"]["customers"]:
        left = result["left_out"]
        click.echo(
            f"  left out: {left['customers']} customers who bought in {', '.join(left['currencies'])}"
            f" (no rate into {money.currency} in [money.rates])"
        )
    for name, params in result["stored"].items():
        click.echo(f"  {name}: {', '.join(f'{k}={v}' for k, v in params.items())}")
    for name, why in result["skipped"].items():
        click.echo(f"  {name}: not fitted: {why}")


@plan.command("tiers")
@config_option
@database_option
def plan_tiers(config_path: str | None, database_url: str | None) -> None:
    """Re-evaluate every customer's rule tier (after [tiers.rules] changed); hand-set tiers stay."""
    from .planning import Planner
    from .planning.planner import refresh_all_tiers
    from .store import Store

    config = _config(config_path, database_url)
    try:
        planner = Planner.from_config(config)
    except PrmError as exc:
        raise click.ClickException(str(exc)) from exc

    async def refresh() -> tuple[int, int]:
        store = Store.open(config.database_url)
        try:
            await store.migrate()
            return await refresh_all_tiers(store, planner)
        finally:
            await store.dispose()

    seen, changed = _run(refresh)
    click.echo(f"{seen} customers evaluated, {changed} tiers changed")


@main.command()
@config_option
@database_option
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 366), help="the period, ending today")
@click.option("--json", "as_json", is_flag=True, help="the scorecard as JSON (as GET /v1/scorecard answers)")
def scorecard(config_path: str | None, database_url: str | None, days: int, as_json: bool) -> None:
    """The touch point value scorecard and balanced-scorecard figures, as tables."""
    from .planning.money import Money
    from .planning.scorecard import scorecard as build
    from .plugins import collect_registrations, make_plugin_manager
    from .store import Store
    from .store.tables import utcnow

    config = _config(config_path, database_url)
    try:
        money = Money.from_config(config)
        names = collect_registrations(make_plugin_manager(), config).touchpoints.names()
    except PrmError as exc:
        raise click.ClickException(str(exc)) from exc

    async def read() -> dict[str, Any]:
        store = Store.open(config.database_url)
        try:
            await store.migrate()
            return await store.read(lambda conn: build(conn, names, utcnow(), days=days, money=money))
        finally:
            await store.dispose()

    card = _run(read)
    if as_json:
        click.echo(json.dumps(card, indent=2, default=str))
        return

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.1f}%"

    def money_of(figure: dict[str, Any]) -> str:
        # one amount in the reporting currency, or the amounts per currency, never added
        if figure["revenue"] is not None:
            return f"{figure['revenue']} {card['currency']}"
        return " and ".join(f"{a} {c}" for c, a in figure["revenue_by_currency"].items())

    click.echo(f"touch points, last {days} days; money in {card['currency']}")
    head = (
        "touch point",
        "customers",
        "conversion",
        "requests",
        "in budget",
        "degraded",
        "offers",
        "accepted",
        "revenue",
    )
    rows = [
        (t["touchpoint"], str(t["customers"]), pct(t["conversion_rate"]), str(t["requests"]), pct(t["in_budget_rate"]),
         pct(t["degraded_rate"]), str(t["offers_made"]), str(t["offers_accepted"]), money_of(t))
        for t in card["touchpoints"]
    ]  # fmt: skip
    _table(head, rows)
    rated = [t for t in card["touchpoints"] if t["surveys"]["answers"]]
    if rated:
        click.echo("")
        click.echo("survey answers (CSAT: average of 1-5, share of 4 and 5; NPS: % promoters less % detractors)")

        def csat(s: dict[str, Any] | None) -> tuple[str, str, str]:
            return (
                ("-", "-", "-") if s is None else (str(s["answers"]), f"{s['average']:.2f}", pct(s["satisfied_rate"]))
            )

        def nps(s: dict[str, Any] | None) -> tuple[str, str]:
            return ("-", "-") if s is None else (str(s["answers"]), f"{s['nps']:+.1f}")

        survey_rows = [
            (t["touchpoint"], str(t["surveys"]["answers"]), *csat(t["surveys"]["csat"]), *nps(t["surveys"]["nps"]))
            for t in rated
        ]
        _table(("rated", "answers", "csat answers", "csat", "satisfied", "nps answers", "nps"), survey_rows)
    b = card["balanced"]
    click.echo("")
    click.echo(f"customers by tier ({b['customers']} customers)")
    tiers = [
        (t["tier"] or "(none)", str(t["customers"]), pct(t["customer_share"]), money_of(t), pct(t["revenue_share"]))
        for t in b["by_tier"]
    ]
    _table(("tier", "customers", "share", "revenue", "share"), tiers)
    click.echo("")
    click.echo(
        f"buyers {b['buyers']}: retained {pct(b['retention_rate'])} (bought within {b['retention_days']} days), "
        f"churned {pct(b['churn_rate'])}, repeat {pct(b['repeat_rate'])}; "
        "average predicted 12-month value "
        + (f"{b['average_clv']} {card['currency']}" if b["average_clv"] is not None else "- (prm plan fit)")
    )
    if card["mixed_currencies"]:
        click.echo(
            f"\nrevenue in {', '.join(card['mixed_currencies'])} is shown per currency, not added:"
            f" [money.rates] has no rate into {card['currency']} for some of them"
        )


@main.group(invoke_without_command=True)
@config_option
@database_option
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.pass_context
def destinations(ctx: click.Context, config_path: str | None, database_url: str | None, as_json: bool) -> None:
    """Where each destination of the change feed is: kind, position, lag, last error, dead letters."""
    if ctx.invoked_subcommand is not None:
        return
    import json

    from .feed.status import destination_status
    from .store import Store

    config = _config(config_path, database_url)
    configured = config.section("destinations")

    async def read() -> list[dict[str, Any]]:
        store = Store.open(config.database_url)
        try:
            await store.migrate()
            return await store.read(lambda conn: destination_status(conn, configured))
        finally:
            await store.dispose()

    found = _run(read)
    if as_json:
        click.echo(json.dumps({"destinations": found}, indent=2))
        return
    if not found:
        click.echo("no destinations: add a [destinations.NAME] table to the configuration")
        return

    def shown(value: Any) -> str:
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    rows = [
        (d["name"], shown(d["kind"]), shown(d["position"]), shown(d["lag"]["changes"]), shown(d["lag"]["seconds"]),
         str(d["dead_letters"]), (d["last_error"] or "")[:80])
        for d in found
    ]  # fmt: skip
    _table(("destination", "kind", "position", "lag", "lag s", "dead letters", "last error"), rows)


@destinations.command("replay")
@click.argument("name")
@click.option("--from", "start", required=True, help="the first position to deliver again")
@config_option
@database_option
def destinations_replay(name: str, start: str, config_path: str | None, database_url: str | None) -> None:
    """Deliver a destination's changes again from a position on (a running hub picks it up)."""
    from .feed.relay import replay
    from .store import Store

    config = _config(config_path, database_url)

    async def run() -> int:
        store = Store.open(config.database_url)
        try:
            await store.migrate()
            return await replay(store, name, start)
        finally:
            await store.dispose()

    cursor = _run(run)
    click.echo(f"{name} delivers again from position {cursor + 1}")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@main.command("new-plugin")
@click.argument("name")
@click.option(
    "--directory",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="where to create prm-NAME/",
)
@click.option(
    "--channel",
    help="the touch point's channel: web, voice, ivr, store, kiosk, email, sms, chat, partner or other"
    " (default: NAME, when it is one)",
)
def new_plugin(name: str, directory: Path, channel: str | None) -> None:
    """Generate a touch-point plugin distribution whose tests pass as generated."""
    from .scaffold import channel_for, check_name, write_plugin

    try:
        check_name(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from exc
    try:
        channel = channel_for(name, channel)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--channel") from exc
    try:
        root = write_plugin(name, directory, channel)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"created {root}; next: cd {root} && pip install -e '.[test]' && pytest")


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--touchpoint", required=True, help="the touch point these contacts happened at")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 1000))
@click.option("--skip-invalid", is_flag=True, help="report invalid lines and go on instead of stopping")
@click.option("--restart", is_flag=True, help="ignore the saved position and read the file from the start")
@config_option
@database_option
def import_(
    file: Path,
    touchpoint: str,
    batch_size: int,
    skip_invalid: bool,
    restart: bool,
    config_path: str | None,
    database_url: str | None,
) -> None:
    """Bulk-load past contacts (JSON Lines of events, or a format the touch point registers,
    such as ARTS POSLog XML for pos) with a progress bar.

    Idempotent on event ids, and resumable: an interrupted import continues where its
    last committed batch ended.
    """
    from .importer import import_events

    config = _config(config_path, database_url)
    configure_logging("warning")
    result = _run(
        lambda: import_events(
            config, file, touchpoint, batch_size=batch_size, skip_invalid=skip_invalid, restart=restart
        )
    )
    click.echo(
        f"{result.accepted} imported, {result.duplicates} already there, {result.invalid} invalid, "
        f"{result.skipped_lines} lines skipped from an earlier run"
    )
    if result.invalid and not skip_invalid:
        sys.exit(1)


@main.command("export")
@click.option("--to", "target", required=True, help="parquet:DIR, or a postgresql:// URL")
@click.option("--schema", default="prm", show_default=True, help="the PostgreSQL schema to write into")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 10_000), help="changes per batch")
@config_option
@database_option
def export_(target: str, schema: str, batch_size: int, config_path: str | None, database_url: str | None) -> None:
    """Export everything the hub holds into a warehouse (Parquet files or a PostgreSQL schema),
    with a progress bar.

    Resumable: the target keeps how far the export got, so running it again continues
    an interrupted export, and later adds only what changed since.
    """
    from .warehouse.export import export

    config = _config(config_path, database_url)
    configure_logging("warning")
    result = _run(lambda: export(config, target, schema=schema, batch_size=batch_size))
    click.echo(
        f"{result.history_rows} history rows and {result.changes} changes written, through position {result.position}"
    )


@main.group()
def identity() -> None:
    """Identity conflicts: events that would have broken an [identity.rules] limit."""


@identity.command("conflicts")
@click.option("--status", default="open", show_default=True, help="open, merged, split or dismissed")
@config_option
@database_option
def identity_conflicts(status: str, config_path: str | None, database_url: str | None) -> None:
    """List identity conflicts, oldest first."""
    from .hub import Hub
    from .identity_review import list_conflicts

    config = _config(config_path, database_url)
    configure_logging("warning")

    async def run() -> list[dict[str, Any]]:
        async with Hub.open(config, autoload=True) as hub:
            return await list_conflicts(hub, status=status)

    found = _run(run)
    if not found:
        click.echo(f"no {status} identity conflicts")
        return
    _table(
        ["id", "event", "customer", "kept apart", "over the limit", "left out"],
        [
            [
                c["id"],
                f"{c['touchpoint']}/{c['event_id']}",
                c["customer_id"],
                ", ".join(c["apart"]) or "-",
                ", ".join(c["namespaces"]),
                ", ".join(c["left_out"]) or "-",
            ]
            for c in found
        ],
    )


@identity.command("resolve")
@click.argument("conflict_id")
@click.argument("resolution", type=click.Choice(["merge", "split", "dismiss"]))
@config_option
@database_option
def identity_resolve(conflict_id: str, resolution: str, config_path: str | None, database_url: str | None) -> None:
    """Resolve a conflict: merge the customers, split the identities left out off, or dismiss it."""
    from .hub import Hub
    from .identity_review import resolve_conflict

    config = _config(config_path, database_url)
    configure_logging("warning")

    async def run() -> dict[str, Any]:
        async with Hub.open(config, autoload=True) as hub:
            return await resolve_conflict(hub, conflict_id, resolution)

    done = _run(run)
    click.echo(f"{done['id']}: {done['status']} (customer {done['customer_id']})")


@main.group()
def retention() -> None:
    """Retention of old events ([touchpoints.<tp>] retention_days)."""


@retention.command("run")
@config_option
@database_option
@click.option("--dry-run", is_flag=True, help="count what would be purged; delete nothing")
def retention_run(config_path: str | None, database_url: str | None, dry_run: bool) -> None:
    """Purge every touch point's events older than its retention_days, now."""
    from .hub import Hub
    from .privacy.retention import run_retention

    config = _config(config_path, database_url)
    configure_logging("warning")

    async def run() -> Any:
        async with Hub.open(config, autoload=True) as hub:
            return await run_retention(hub, dry_run=dry_run)

    report = _run(run)
    if not report:
        click.echo("no touch point has a retention policy ([touchpoints.<tp>] retention_days)")
    for tp, counts in report.items():
        verb = "would be purged (dry run)" if dry_run else "purged"
        click.echo(f"{tp}: {counts['events']} events, {counts['dialogues']} dialogues {verb}")


if __name__ == "__main__":
    main()
