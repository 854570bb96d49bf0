"""Every fenced code block of the documentation is run or checked: one test per block.

The pages are ``README.md``, ``contrib/README.md``, ``examples/README.md`` and ``docs/*.md``.
A block gets its check from its language, or from HTML comments on the lines right before
its fence (invisible on GitHub and on the site)::

    <!-- sample: KIND ARGS -->          the check to run (below)
    <!-- not run: REASON -->            deliberately illustrative: the reason is required
    <!-- samples: KIND ARGS -->         anywhere on a page: the default for its unmarked blocks

By language, when unmarked: ``python`` is ``run``, ``toml`` is ``config``, ``json`` is
``json``, ``sh``/``bash``/``console``/``shell`` is ``shell``. Any other block must be marked,
or this test fails naming it. MyST directives (```` ```{toctree} ````) are not samples: the
strict site build (tests/test_docs_site.py) checks them.

Kinds:

- ``run [with=SCOPE] [live=SCOPE]``: executed as a module (top-level ``await`` allowed), with
  the names the ``SCOPES`` entry gives in scope; ``live=touchpoint:web`` rewrites
  ``https://hub.example.com`` to the test hub and ``prm_...`` to a key of that scope.
- ``config [live]``: written to a file, loaded with ``load_config`` (every ``env:`` secret set)
  and the hub's whole server started with it on SQLite (``create_app``: ``Hub.open`` and every
  adapter; listening ports become 0, a PBX address a closed local port); a fragment is a whole
  config on its own. ``live``: the test hub runs with it too (later samples on the page need it).
- ``json [example] [answer] [pops=PATH] [view=REF] [get=PATH]``: parsed (several values in a
  row are JSON Lines; a ``"key": value`` fragment is read as an object member); ``example``
  allows ``...`` placeholders. What is shown is then compared with the hub's own answer: the
  keys shown must be there (``...`` stands for the rest; exactly those at the top for
  ``answer`` and ``pops``). ``answer``: the page's ``post`` sample before it, sent again; ``pops=PATH``: the
  messages an agent's screen-pop socket at PATH receives when that sample is sent again;
  ``view=REF``: the customer view ``GET /v1/customers/REF``; ``get=PATH``: ``GET PATH`` (scope
  read) after the page's requests are sent again.
- ``post PATH scope=SCOPE [status=N]``: parsed and sent to the test hub; the status checked;
  a journaled answer's ``position`` read after, so what follows sees its events.
- ``http [send ref=REF [scope=S]]``: lines ``METHOD PATH (scope ...)``: the route is in the hub's
  ``/openapi.json``; an ``-> N`` after it or a JSON body under it is parsed (placeholders
  allowed); ``send``: sent too (``{...}`` in the path is REF, after the page's ``post``
  samples), with a key of scope S (admin) and the status shown (200 when none is).
- ``shell [keys NAME=SCOPE ...]``: every command run, in one shell session per page (variables
  carry over to later blocks; ``keys`` makes keys for names the page leaves to the reader):
  ``prm keys|db|plugins ...`` really, against the test hub's database; ``prm serve|demo`` and
  ``python bench/...`` with ``--help``; ``curl`` translated to a request to the test hub
  (``localhost:8700``, ``https://hub.example.com``) expecting a 2xx, and a ``# {...}`` comment
  line after it compared with the answer (only its keys when it has ``...``);
  ``pip install -e .[x]`` checks the extras exist; ``pytest ARGS`` that the named files exist;
  scripts are syntax-checked. In a ``console`` block, the ``$ `` lines are the commands and the
  others their output.
- ``file PATH``: a python file of a plugin, written to PATH under a temporary directory (with
  the page's other ``file`` blocks), imported and registered against the real hook specs.
- ``pytest``: a test module, run by pytest (``asyncio_mode=auto``) beside the page's files.
- ``pyproject``: packaging: it depends on the hub's distribution, and its entry-point groups are
  the ones the plugin manager loads.
- ``rules``: each line compiles as a planning rule.
- ``tree``: every path named in a directory listing exists.
- ``tested-by PATH[::TEST]``: another test module checks this block; it must exist, name the page,
  and hold that test.

The test hub is one ``prm serve`` subprocess for the module, on a temporary SQLite database,
whose reads by position wait as long as every test hub's (``TEST_INGEST``).
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import inspect
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from attrs import Factory, evolve, frozen

from prm_core.config import load_config
from prm_core.testing import TEST_INGEST

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    ROOT / "README.md",
    ROOT / "contrib" / "README.md",
    ROOT / "examples" / "README.md",
    # api.md is generated from /openapi.json by the site build (docs/_ext/openapi_page.py)
    *sorted(page for page in (ROOT / "docs").glob("*.md") if page.name != "api.md"),
]
DEFAULTS = {
    "python": "run",
    "toml": "config",
    "json": "json",
    **dict.fromkeys(["sh", "bash", "console", "shell"], "shell"),
}
FENCE = re.compile(r"^(```+|~~~+)\s*([^\s`]*)")
MARK = re.compile(r"^<!--\s*(sample|samples|not run):\s*(.*?)\s*-->$")
PRM = str(Path(sys.executable).parent / "prm")
WHSEC = "whsec_" + base64.b64encode(b"doc-samples-secret-0123456789abc").decode()


@frozen
class Block:
    page: str
    line: int
    lang: str
    code: str
    kind: str
    args: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    name = page.relative_to(ROOT).as_posix()
    default = ""
    for line in lines:
        m = MARK.match(line.strip())
        if m and m.group(1) == "samples":
            default = m.group(2)
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i].strip())
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence))
        code = "\n".join(lines[i + 1 : end]) + "\n"
        if not lang.startswith("{"):
            kind = ""
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("<!--"):
                mark = MARK.match(lines[j].strip())
                if mark and mark.group(1) == "not run":
                    kind = f"not-run {mark.group(2)}"
                elif mark and mark.group(1) == "sample":
                    kind = mark.group(2)
                j -= 1
            kind = kind or default or DEFAULTS.get(lang, "")
            word, *args = kind.split(" ", 1) if kind else ("",)
            blocks.append(Block(name, i + 1, lang, code, word, tuple(args[0].split()) if args else ()))
        i = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in read_blocks(page)]


# ---- the test hub: one `prm serve` for the module ------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@frozen
class LiveHub:
    base: str
    env: dict[str, str]
    keys: dict[str, str] = Factory(dict)

    def prm(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PRM, *args],
            capture_output=True,
            text=True,
            env=env or self.env,
            cwd=ROOT,
            timeout=120,
        )

    def key(self, scope: str) -> str:
        """A key of ``scope`` (one per scope, made as the docs make them)."""
        if scope not in self.keys:
            done = self.prm("keys", "create", "--scope", scope)
            assert done.returncode == 0, done.stderr
            self.keys[scope] = done.stdout.strip().splitlines()[-1]
        return self.keys[scope]

    def events_recorded(self) -> float:
        """``prm_events_total`` from ``/metrics``, every touch point."""
        status, body = self.request("GET", "/metrics")
        assert status == 200
        found = re.findall(r"^prm_events_total\{[^}]*\} ([0-9.e+]+)$", body.decode(), flags=re.M)
        return sum(float(n) for n in found)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def _toml(table: dict[str, Any], prefix: str = "") -> str:
    """Tables of scalars and lists as TOML (JSON's strings, numbers and arrays are TOML's)."""
    scalars = [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, dict)]
    out = (f"[{prefix}]\n" if prefix and scalars else "") + "".join(line + "\n" for line in scalars)
    for key, value in table.items():
        if isinstance(value, dict):
            out += _toml(value, f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key))
    return out


def _merge(into: dict[str, Any], more: dict[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveHub]:
    home = tmp_path_factory.mktemp("live")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
    env |= {"PRM_DATABASE_URL": f"sqlite:///{home}/prm.db", "PWD": str(ROOT)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # the journal's waits of every test hub (TEST_INGEST), under what the pages set
    config: dict[str, Any] = {"ingest": dict(TEST_INGEST)}
    for block in BLOCKS:
        if block.kind == "config" and "live" in block.args:
            _merge(config, tomllib.loads(block.code))
    (home / "prm.toml").write_text(_toml(config), encoding="utf-8")
    log = (home / "serve.log").open("w")
    proc = subprocess.Popen(
        [PRM, "serve", "--config", str(home / "prm.toml"), "--port", str(port), "--log-level", "warning"],
        env=env,
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    hub = LiveHub(f"http://127.0.0.1:{port}", env)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (home / "serve.log").read_text()
            with contextlib.suppress(OSError):
                if hub.request("GET", "/openapi.json")[0] == 200:
                    break
            assert time.monotonic() < deadline, "prm serve did not start in 60 s"
            time.sleep(0.2)
        yield hub
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def openapi(live: LiveHub) -> dict[str, Any]:
    status, body = live.request("GET", "/openapi.json")
    assert status == 200
    return dict(json.loads(body))


# ---- json ---------------------------------------------------------------------------------


def without_placeholders(text: str) -> str:
    """``{...}``, ``[...]``, ``..., `` and ``, ...`` (outside strings) removed: the example's shape."""
    out = re.sub(r"\{\s*\.\.\.\s*\}", "{}", text)
    out = re.sub(r"\[\s*\.\.\.\s*\]", "[]", out)
    out = re.sub(r",\s*\.\.\.(?=\s*[}\]])", "", out)
    return out


def parse_json(text: str, *, placeholders: bool) -> list[Any]:
    if placeholders:
        text = without_placeholders(text)
    text = text.strip()
    if re.match(r'^"[^"]+"\s*:', text):  # a member shown on its own
        text = "{" + text + "}"
    decoder, values, pos = json.JSONDecoder(), [], 0
    while pos < len(text):
        value, pos = decoder.raw_decode(text, pos)
        values.append(value)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    assert values, "an empty JSON block"
    return values


def same_shape(shown: Any, got: Any, where: str, *, top: bool = True) -> None:
    """The keys an example answer shows are the answer's (at every depth where both have some):
    at the top, exactly; inside, those shown exist (``...`` stands for the rest)."""
    if isinstance(shown, dict):
        assert isinstance(got, dict), f"{where}: shows an object, the hub answered {got!r}"
        assert set(shown) <= set(got), f"{where}: shows {sorted(set(shown) - set(got))}, not in the answer {got}"
        assert not top or set(shown) == set(got), f"{where}: the answer also has {sorted(set(got) - set(shown))}"
        for key in shown:
            same_shape(shown[key], got[key], f"{where} .{key}", top=False)
    elif isinstance(shown, list) and shown and isinstance(got, list) and got:
        same_shape(shown[0], got[0], f"{where}[0]", top=False)


def post(block: Block, hub: LiveHub) -> Any:
    """Send a request sample to the test hub; its status checked; the answer."""
    path, *rest = block.args
    opts = dict(arg.split("=", 1) for arg in rest)
    body = parse_json(block.code, placeholders=False)
    assert len(body) == 1
    headers = {"Authorization": f"Bearer {hub.key(opts['scope'])}", "Content-Type": "application/json"}
    status, answer = hub.request("POST", path, json.dumps(body[0]).encode(), headers)
    assert status == int(opts.get("status", 200)), f"POST {path}: {status} {answer[:500]!r}"
    got = json.loads(answer)
    recorded(hub, got)
    return got


def recorded(hub: LiveHub, answer: Any) -> None:
    """Wait, as a client does, until the events of an events answer are recorded: a read
    passing its ``position`` (the feed's, which takes it as a header and names no customer);
    at once for an answer without one (recorded before it answered)."""
    if not isinstance(answer, dict) or "position" not in answer:
        return
    headers = {"Authorization": f"Bearer {hub.key('read')}", "PRM-After-Position": str(answer["position"])}
    status, body = hub.request("GET", "/v1/changes?limit=1", None, headers)
    assert status == 200, f"position {answer['position']}: {status} {body[:500]!r}"


def screen_pops(block: Block, shown: list[Any], hub: LiveHub, path: str) -> None:
    """The messages an agent's socket shows: connect, replay the page's CTI sample (its ids
    made new, so that it is not a duplicate), and compare each message shown with the first
    of its type received. Heartbeats come every ``heartbeat_s`` (20 s): not waited for."""
    import aiohttp

    request_block = [b for b in BLOCKS if b.page == block.page and b.kind == "post" and b.line < block.line][-1]
    body = parse_json(request_block.code, placeholders=False)[0]
    for event in body["events"]:
        event["id"] = f"{event['id']}-{time.monotonic_ns()}"
    post_path, *rest = request_block.args
    scope = dict(arg.split("=", 1) for arg in rest)["scope"]
    headers = {"Authorization": f"Bearer {hub.key(scope)}"}
    wanted = {message["type"] for message in shown} - {"heartbeat"}

    async def listen() -> dict[str, Any]:
        got: dict[str, Any] = {}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.ws_connect(hub.base + path, protocols=["prm.screenpop.v1"]) as ws:
                first = await ws.receive_json(timeout=10)
                got.setdefault(first["type"], first)
                async with session.post(hub.base + post_path, json=body) as answer:
                    assert answer.status == 200, await answer.text()
                while not wanted <= set(got):
                    message = await ws.receive_json(timeout=10)
                    got.setdefault(message["type"], message)
        return got

    got = asyncio.run(listen())
    for message in shown:
        if message["type"] in got:
            same_shape(message, got[message["type"]], f"{block.id} {message['type']}")


def customer_view(hub: LiveHub, ref: str) -> Any:
    """``GET /v1/customers/REF`` (a web event for that identity recorded first: it exists)."""
    namespace, value = ref.split(":", 1)
    event = {"id": f"doc-view-{time.monotonic_ns()}", "type": "page", "occurred_at": "2026-11-23T08:00:00Z"}
    event["identities"] = {namespace: value}
    web = {"Authorization": f"Bearer {hub.key('touchpoint:web')}", "Content-Type": "application/json"}
    status, answer = hub.request("POST", "/v1/touchpoints/web/events", json.dumps(event).encode(), web)
    assert status == 200, answer
    position = json.loads(answer).get("position")
    after = "" if position is None else f"?after={position}"
    read = {"Authorization": f"Bearer {hub.key('read')}"}
    status, answer = hub.request("GET", f"/v1/customers/{ref}{after}", None, read)
    assert status == 200, answer
    return json.loads(answer)


# ---- python -------------------------------------------------------------------------------


def _signed_webhook() -> dict[str, Any]:
    from standardwebhooks import Webhook

    body = json.dumps({"id": "appt-1", "state": "confirmed"})
    msg_id, stamp = "msg_1", __import__("datetime").datetime.now(__import__("datetime").UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(WHSEC).sign(msg_id, stamp, body),
    }
    return {"secret": WHSEC, "raw_body": body, "request_headers": headers}


def _simulators() -> dict[str, Any]:
    from prm_tmf.simulators import AppointmentSimulator, StockSimulator

    return {"secret": WHSEC, "AppointmentSimulator": AppointmentSimulator, "StockSimulator": StockSimulator}


async def _stop_simulators(scope: dict[str, Any]) -> None:
    if "sim" in scope:
        await scope["sim"].stop()


# with=NAME: what a fragment needs in scope, and what to clean up after it
SCOPES: dict[str, tuple[Callable[[], dict[str, Any]], Callable[[dict[str, Any]], Any] | None]] = {
    "webhook": (_signed_webhook, None),
    "simulator": (_simulators, _stop_simulators),
}


def run_python(block: Block, live: Callable[[], LiveHub]) -> None:
    opts = dict(arg.split("=", 1) for arg in block.args)
    code = block.code
    scope: dict[str, Any] = {"__name__": f"doc_sample_{block.line}"}
    cleanup = None
    if "with" in opts:
        make, cleanup = SCOPES[opts["with"]]
        scope |= make()
    hub = live() if "live" in opts else None
    if hub is not None:
        code = code.replace("https://hub.example.com", hub.base).replace("prm_...", hub.key(opts["live"]))
        before = hub.events_recorded()
    compiled = compile(code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

    async def main() -> None:
        try:
            result = eval(compiled, scope)  # the documentation's own sample
            if inspect.iscoroutine(result):
                await result
        finally:
            if cleanup is not None:
                await cleanup(scope)

    if compiled.co_flags & inspect.CO_COROUTINE:
        asyncio.run(main())
    else:
        module = types.ModuleType(scope["__name__"])
        module.__dict__.update(scope)
        exec(compiled, module.__dict__)  # the documentation's own sample
        if cleanup is not None:
            asyncio.run(cleanup(module.__dict__))
    if hub is not None:
        assert hub.events_recorded() > before, f"{block.id} ran, but the hub recorded no event"


# ---- toml ---------------------------------------------------------------------------------


def _env_names(value: Any) -> Iterator[str]:
    if isinstance(value, str) and value.startswith("env:"):
        yield value[4:]
    elif isinstance(value, dict):
        for v in value.values():
            yield from _env_names(v)
    elif isinstance(value, list):
        for v in value:
            yield from _env_names(v)


def _free_ports(value: Any) -> Any:
    """Listening ports in a documented config become 0: the OS chooses (the test may run twice)."""
    if isinstance(value, Mapping):  # the config's tables are read-only Mappings (prm_core.config.Table)
        return {k: 0 if k == "port" else _free_ports(v) for k, v in value.items()}
    return value


def check_config(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tomllib.loads(block.code)
    for name in _env_names(raw):
        monkeypatch.setenv(name, WHSEC if "SECRET" in name else "doc-sample-secret")
    monkeypatch.delenv("PRM_DATABASE_URL", raising=False)
    monkeypatch.delenv("PRM_CONFIG", raising=False)
    file = tmp_path / "prm.toml"
    file.write_text(block.code, encoding="utf-8")
    config = load_config(file, database_url=f"sqlite:///{tmp_path}/prm.db")  # the file as written
    started = _free_ports(dict(config.raw))
    ami = started.get("touchpoints", {}).get("callcenter", {}).get("ami")
    if ami:  # the documented PBX is not here: a closed local port (the adapter retries, quietly)
        ami["host"], ami["port"] = "127.0.0.1", _free_port()

    async def start() -> None:
        """The whole server on this config, as ``prm serve`` runs it: every adapter mounts."""
        from aiohttp.test_utils import TestClient, TestServer

        from prm_core.server.app import create_app

        async with TestClient(TestServer(create_app(evolve(config, raw=started)))) as client:
            answer = await client.get("/openapi.json")
            assert answer.status == 200

    asyncio.run(start())


# ---- http ---------------------------------------------------------------------------------

ROUTE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE)\s+(/\S+)")


def _template(path: str) -> str:
    """``/v1/customers/{ref}`` and ``/v1/customers/{namespace:value}`` alike: ``/v1/customers/{}``."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def sender(block: Block, hub: LiveHub) -> Callable[[str, str, str, set[int]], None]:
    """What sends an ``http send`` block's requests to the test hub."""
    opts = dict(arg.split("=", 1) for arg in block.args if "=" in arg)
    key = hub.key(opts.get("scope", "admin"))

    def send(method: str, path: str, body: str, statuses: set[int]) -> None:
        path = re.sub(r"\{[^}]*\}", opts["ref"], path)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        got, answer = hub.request(method, path, body.encode() or None, headers)
        assert got in statuses, f"{block.id}: {method} {path}: {got} {answer[:500]!r}"

    return send


def replay(block: Block, hub: LiveHub, openapi: dict[str, Any]) -> None:
    """Send the page's requests before ``block`` again: they made what it works on."""
    for earlier in BLOCKS:
        if earlier.page == block.page and earlier.line < block.line:
            if earlier.kind == "post":
                post(earlier, hub)
            elif earlier.kind == "http" and "send" in earlier.args:
                check_http(earlier, openapi, sender(earlier, hub))


def check_http(block: Block, openapi: dict[str, Any], send: Callable[[str, str, str, set[int]], None] | None) -> None:
    routes = {(m.upper(), _template(p)) for p, ops in openapi["paths"].items() for m in ops}
    segments: list[list[str]] = []
    for raw in block.code.splitlines():
        if ROUTE.match(raw.strip()):
            segments.append([raw.strip()])
        elif raw.strip():
            assert segments, f"{block.id}: an http block starts with METHOD /path"
            segments[-1].append(raw.strip())
    assert segments, f"{block.id}: an http block names no METHOD /path"
    for first, *more in segments:
        m = ROUTE.match(first)
        assert m
        route = (m.group(1), _template(m.group(2).split("?")[0]))
        if route not in routes:
            alike = sorted(p for meth, p in routes if p.split("/")[:3] == route[1].split("/")[:3])
            pytest.fail(f"{block.id}: {route[0]} {route[1]} is not a route of the hub; alike: {alike}")
        rest = re.sub(r"^\s*\([^)]*\)\s*", "", first[m.end() :])
        text = " ".join([rest, *more]).strip()
        arrow = re.search(r"->\s*(\d{3})\s*(.*)$", text)
        body = text[: arrow.start()].strip() if arrow else text
        if body:
            parse_json(body, placeholders=True)
        if send is not None:
            statuses = (
                {int(arrow.group(1)), *map(int, re.findall(r"\bor (\d{3})\b", arrow.group(2)))} if arrow else {200}
            )
            send(route[0], m.group(2), body, statuses)
        if arrow and arrow.group(2).strip().startswith("{"):
            answer = re.sub(r",?\s*or\s+\d{3}\s*$", "", arrow.group(2).strip())
            answer = re.sub(r'"(\w+)"(?=\s*[,}])', r'"\1": 0', answer)  # {"customer_id", ...}: names
            answer = re.sub(r":\s*n\b", ": 0", answer)
            json.JSONDecoder().raw_decode(without_placeholders(answer))  # the object; prose may follow


# ---- shell --------------------------------------------------------------------------------


@frozen
class Session:
    env: dict[str, str]
    done: set[int]


SESSIONS: dict[tuple[str, str], Session] = {}  # by test hub and page


def _expand(token: str, env: dict[str, str]) -> str:
    def var(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in env, f"${name} is not set: a block before this one on the page must define it"
        return env[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", var, token)


def commands(code: str, *, console: bool = False) -> Iterator[tuple[str, str | None]]:
    """Each command of a block (continuation lines and quoted newlines joined), with the
    comment line that follows it when that comment shows an answer (``# {...}``). In a
    ``console`` block only ``$ `` lines (and their continuations) are commands: the rest is output."""
    if console:
        kept, going = [], False
        for line in code.splitlines():
            if line.startswith("$ "):
                kept.append(line[2:])
                going = line.endswith("\\")
            elif going:
                kept.append(line)
                going = line.endswith("\\")
        code = "\n".join(kept)
    pending: list[str] = []
    out: list[tuple[str, str | None]] = []
    for line in code.splitlines():
        if not pending and not line.strip():
            continue
        if not pending and line.lstrip().startswith("#"):
            if out and line.lstrip()[1:].strip().startswith("{") and out[-1][1] is None:
                out[-1] = (out[-1][0], line.lstrip()[1:].strip())
            continue
        pending.append(line)
        text = "\n".join(pending)
        if text.endswith("\\"):
            continue
        try:
            shlex.split(text, comments=True)
        except ValueError:
            continue  # an open quote: the command goes on
        out.append((text.replace("\\\n", " "), None))
        pending = []
    assert not pending, f"unterminated command: {pending}"
    yield from out


def _extras() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project.get("optional-dependencies", {}))


def run_command(tokens: list[str], env: dict[str, str], live: LiveHub, shown: str | None) -> str:
    assigns: dict[str, str] = {}
    while tokens and re.match(r"^\w+=", tokens[0]):
        name, value = tokens.pop(0).split("=", 1)
        assigns[name] = value
    assert tokens, "an assignment with no command"
    run_env = env | assigns
    cmd, args = tokens[0], tokens[1:]
    if cmd == "pip":
        assert args[:2] == ["install", "-e"], args
        m = re.match(r"^\.(?:\[([\w,-]+)\])?$", args[2])
        assert m, f"pip install -e {args[2]}: not this project"
        missing = set((m.group(1) or "").split(",")) - {""} - _extras()
        assert not missing, f"no such extras in pyproject.toml: {missing}"
        return ""
    if cmd == "pytest":
        for arg in (a for a in args if not a.startswith("-")):
            assert list(ROOT.glob(arg.split("::")[0])), f"pytest {arg}: no such test file"
        return ""
    if cmd in {".", "source"}:
        assert args == [".venv/bin/activate"], args  # the virtualenv this test already runs in
        return ""
    if cmd == "export":
        for item in args:
            name, value = item.split("=", 1)
            env[name] = WHSEC if value.startswith("whsec_") else value.replace("...", "doc-sample-secret")
        return ""
    if cmd == "prm":
        if args[0] in {"serve", "demo"}:
            args = [*args, "--help"]
        done = live.prm(*args, env=run_env)
        assert done.returncode == 0, f"prm {' '.join(args)}: {done.stderr[-2000:]}"
        return done.stdout
    if cmd == "python" and args and args[0].startswith("bench/"):
        done = subprocess.run([sys.executable, args[0], "--help"], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        flags = {a.split("=")[0] for a in args[1:] if a.startswith("-")}
        assert all(flag in done.stdout for flag in flags), f"{args}: {done.stdout}"
        return ""
    if cmd.startswith("./") and cmd.endswith(".sh"):
        script = ROOT / cmd
        assert script.exists() and os.access(script, os.X_OK), f"{cmd} is missing or not executable"
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        if "PRM_CONFIG" in assigns:
            assert (ROOT / assigns["PRM_CONFIG"]).exists()
        return ""
    if cmd == "nginx":
        assert args[0] == "-c" and Path(args[1]).exists(), args
        if shutil.which("nginx"):
            done = subprocess.run(["nginx", "-t", "-c", args[1]], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
        return ""
    if cmd == "curl":
        return curl(args, live, shown)
    raise AssertionError(f"{cmd}: a command the doc-sample test does not know: teach it, or mark the block")


def curl(args: list[str], live: LiveHub, shown: str | None) -> str:
    headers: dict[str, str] = {}
    data: str | None = None
    method, url = None, None
    it = iter(args)
    for arg in it:
        if arg in {"-s", "-S", "-sS", "--silent", "-f", "--fail"}:
            continue
        if arg in {"-H", "--header"}:
            name, value = next(it).split(":", 1)
            headers[name.strip()] = value.strip()
        elif arg in {"-d", "--data", "--data-raw"}:
            data = next(it)
        elif arg in {"-X", "--request"}:
            method = next(it)
        elif arg in {"-u", "--user"}:
            headers["Authorization"] = "Basic " + base64.b64encode(next(it).encode()).decode()
        else:
            assert not arg.startswith("-"), f"curl {arg}: an option the doc-sample test does not know"
            url = arg
    assert url, "curl without a URL"
    path = re.sub(r"^(https?://)?(localhost:8700|127\.0\.0\.1:8700|hub\.example\.com)", "", url)
    assert path.startswith("/"), f"curl {url}: not the hub's address"
    if data is not None:
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        json.loads(data)  # the body is JSON (the hub reads it whatever curl's default type)
    status, body = live.request(
        method or ("POST" if data is not None else "GET"), path, data.encode() if data else None, headers
    )
    assert 200 <= status < 300, f"curl {url}: {status} {body[:500]!r}"
    if shown is not None:
        example = shown.split("--")[0]
        expected = parse_json(example, placeholders=True)[0]
        got = json.loads(body)
        if "..." in example:
            assert set(expected) == set(got), f"the page shows {expected}, the hub answered {got}"
        else:
            assert expected == got, f"the page shows {expected}, the hub answered {got}"
    return body.decode()


def run_shell(block: Block, live: LiveHub) -> None:
    session = SESSIONS.setdefault((live.base, block.page), Session(dict(live.env), set()))
    keys = dict(arg.split("=", 1) for arg in block.args[1:]) if block.args[:1] == ("keys",) else {}
    for name, scope in keys.items():
        session.env.setdefault(name, live.key(scope))
    # a page's shell blocks are one session: run the earlier ones first (once)
    for earlier in BLOCKS:
        if earlier.page == block.page and earlier.kind == "shell" and earlier.line < block.line:
            if earlier.line not in session.done:
                run_shell(earlier, live)
    for text, shown in commands(block.code, console=block.lang == "console"):
        m = re.match(r"^(\w+)=\$\((.*)\)\s*(#.*)?$", text.strip(), flags=re.S)
        if m:  # NAME=$(command | tail -n 1)
            inner, _, tail = m.group(2).partition("|")
            output = run_command([_expand(t, session.env) for t in shlex.split(inner)], session.env, live, None)
            assert tail.split() in ([], ["tail", "-n", "1"]), tail
            session.env[m.group(1)] = output.strip().splitlines()[-1] if tail else output.strip()
            continue
        for part in re.split(r"\s&&\s", text):
            tokens = [_expand(t, session.env) for t in shlex.split(part, comments=True)]
            run_command(tokens, session.env, live, shown)
    session.done.add(block.line)


# ---- the rest -----------------------------------------------------------------------------


def check_rules(block: Block) -> None:
    from prm_core.planning import compile_rule

    for i, line in enumerate(block.code.strip().splitlines()):
        compile_rule(f"example{i}", line, where=f"{block.id} line {i + 1}")


def check_tree(block: Block) -> None:
    """A listing of ``dir/`` lines and indented ``name  what`` lines: each name exists."""
    parent: Path | None = None
    for line in block.code.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            head = line.split()[0]
            if head.endswith("/"):
                parent = ROOT / head
            elif head.endswith("*"):  # plugins/prm_*: a glob
                assert list(ROOT.glob(head)), f"{head}: nothing matches"
                parent = None
            continue
        if parent is None:
            continue
        for name in re.findall(r"(?:^|\s{2,}|;\s+)([\w.]+\.py|[\w]+/)(?=\s)", line):
            assert (parent / name).exists(), f"{block.id}: {parent.relative_to(ROOT)}/{name} does not exist"


def check_tested_by(block: Block) -> None:
    assert block.args, f"{block.id}: tested-by names no test"
    path, _, test = block.args[0].partition("::")
    module = ROOT / path
    assert module.exists(), f"{block.id}: {path} does not exist"
    source = module.read_text(encoding="utf-8")
    assert Path(block.page).name in source, f"{path} does not read {block.page}"
    if test:
        assert re.search(rf"def {re.escape(test)}\(", source), f"{path} has no test {test}"


# ---- the test -----------------------------------------------------------------------------


def _page_files(page: str, into: Path) -> list[str]:
    """Write the page's ``file PATH`` blocks under ``into``; the module names they make."""
    names = []
    for block in BLOCKS:
        if block.page == page and block.kind == "file":
            target = into / block.args[0]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code, encoding="utf-8")
            if target.suffix == ".py":
                names.append(".".join(target.relative_to(into).with_suffix("").parts).removesuffix(".__init__"))
    return names


def check_file(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A python file of a plugin: it imports and registers against the real hook specs."""
    from prm_core.plugins import make_plugin_manager

    assert block.args, f"{block.id}: `file` names no path"
    names = _page_files(block.page, tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in names:
        module = __import__(name)
        make_plugin_manager([module], autoload=False).check_pending()
        sys.modules.pop(name, None)


def check_pytest(block: Block, tmp_path: Path) -> None:
    """A test module: run by pytest (asyncio auto mode, as the page says) beside the page's files."""
    _page_files(block.page, tmp_path)
    (tmp_path / "test_doc_sample.py").write_text(block.code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRM_")}
    env["PYTHONPATH"] = str(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "test_doc_sample.py",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def check_pyproject(block: Block) -> None:
    """A plugin's packaging: an entry point in the group the plugin manager loads."""
    from prm_core import plugins

    project = tomllib.loads(block.code)["project"]
    hub = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["name"]
    names = {re.split(r"[\s\[<>=!~;]", dep, maxsplit=1)[0] for dep in project.get("dependencies", [])}
    assert hub in names, f"{block.id}: a plugin depends on the hub's distribution, {hub!r}, not {sorted(names)}"
    groups = project.get("entry-points", {})
    assert groups, f"{block.id}: no entry points"
    for group in groups:
        assert f'"{group}"' in inspect.getsource(plugins), f"the plugin manager does not load the group {group!r}"


KINDS = {
    "file",
    "pytest",
    "pyproject",
    "run",
    "config",
    "json",
    "post",
    "http",
    "shell",
    "rules",
    "tree",
    "tested-by",
    "not-run",
}


def test_every_page_has_its_samples_found() -> None:
    pages = {block.page for block in BLOCKS}
    assert {"README.md", "docs/hooks.md", "docs/pos.md", "examples/README.md"} <= pages
    assert len(BLOCKS) > 60


def test_every_marker_is_on_a_block() -> None:
    """A ``sample``/``not run`` comment sits right above a fence (with only comments between):
    one left behind when a block moved, or misspelled, would check nothing."""
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            text = line.strip()
            if not text.startswith("<!--") or not re.search(r"samp|not.?run", text):
                continue
            where = f"{page.relative_to(ROOT)}:{n + 1}"
            mark = MARK.match(text)
            assert mark, f"{where}: not a marker as this test reads them: {text}"
            if mark.group(1) == "samples":
                continue
            after = next(x for x in lines[n + 1 :] if not x.strip().startswith("<!--"))
            assert FENCE.match(after.strip()), f"{where}: the marker is not right above a code block"


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_doc_sample(
    block: Block, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert block.kind, (
        f"{block.id}: a ```{block.lang} block with no check: mark it <!-- sample: KIND --> or <!-- not run: why -->"
    )
    assert block.kind in KINDS, f"{block.id}: unknown kind {block.kind!r}"

    def live() -> LiveHub:
        return request.getfixturevalue("live")  # type: ignore[no-any-return]

    if block.kind == "not-run":
        assert len(" ".join(block.args)) >= 10, f"{block.id}: `not run` needs a reason"
    elif block.kind == "run":
        run_python(block, live)
    elif block.kind == "config":
        check_config(block, tmp_path, monkeypatch)
    elif block.kind == "json":
        shown = parse_json(block.code, placeholders=block.args[:1] == ("example",))
        pops = [arg.split("=", 1)[1] for arg in block.args if arg.startswith("pops=")]
        if pops:
            screen_pops(block, shown, live(), pops[0])
        views = [arg.split("=", 1)[1] for arg in block.args if arg.startswith("view=")]
        if views:
            assert len(shown) == 1
            same_shape(shown[0], customer_view(live(), views[0]), block.id, top=False)
        gets = [arg.split("=", 1)[1] for arg in block.args if arg.startswith("get=")]
        if gets:
            assert len(shown) == 1
            hub = live()
            replay(block, hub, request.getfixturevalue("openapi"))
            status, answer = hub.request("GET", gets[0], None, {"Authorization": f"Bearer {hub.key('read')}"})
            assert status == 200, answer
            same_shape(shown[0], json.loads(answer), block.id, top=False)
        if "answer" in block.args:  # the answer to the page's request sample before it
            request_block = [b for b in BLOCKS if b.page == block.page and b.kind == "post" and b.line < block.line][-1]
            assert len(shown) == 1
            same_shape(shown[0], post(request_block, live()), block.id)
    elif block.kind == "post":
        post(block, live())
    elif block.kind == "http":
        openapi = request.getfixturevalue("openapi")
        if "send" in block.args:
            hub = live()
            replay(block, hub, openapi)
            check_http(block, openapi, sender(block, hub))
        else:
            check_http(block, openapi, None)
    elif block.kind == "shell":
        run_shell(block, live())
    elif block.kind == "rules":
        check_rules(block)
    elif block.kind == "tree":
        check_tree(block)
    elif block.kind == "file":
        check_file(block, tmp_path, monkeypatch)
    elif block.kind == "pytest":
        check_pytest(block, tmp_path)
    elif block.kind == "pyproject":
        check_pyproject(block)
    elif block.kind == "tested-by":
        check_tested_by(block)
