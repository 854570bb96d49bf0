// The agent desktop. An agent signs in with a one-time code (from the link a supervisor's
// tool or the CTI issued: agent#code=...), traded for a session token of that agent only,
// kept in this tab's sessionStorage. Screen pops come on a WebSocket opened with a one-time
// ticket; notes and outcomes go to the agent's own endpoint. Every URL is relative to the
// page, so the desktop works wherever the hub is mounted. Everything from the hub is shown
// with textContent, never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const store = window.sessionStorage;
  const state = { socket: null, call: null, retry: 0, watchdog: null, heartbeatMs: 20000, timer: null };
  const url = (path) => new URL(path, document.baseURI);

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function session() {
    const token = store.getItem("prm.agent.token");
    const agent = store.getItem("prm.agent.id");
    return token && agent ? { token, agent } : null;
  }

  function setStatus(text, cls) {
    const status = $("status");
    status.textContent = text;
    status.className = cls || "";
  }

  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  }

  async function api(method, path, body, token) {
    const headers = { "Content-Type": "application/json" };
    const bearer = token === undefined ? (session() || {}).token : token;
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const resp = await fetch(url(path), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    const answer = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const error = new Error((answer.error && answer.error.message) || `the hub answered ${resp.status}`);
      error.status = resp.status;
      throw error;
    }
    return answer;
  }

  // ---- times in the agent's own words and time zone -------------------------------------

  const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
  const day = new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short" });
  const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

  function when(iso) {
    if (!iso) return "";
    const at = new Date(iso);
    if (Number.isNaN(at.getTime())) return "";
    const midnight = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
    const days = Math.round((midnight(at) - midnight(new Date())) / 86400000);
    const date = Math.abs(days) <= 1 ? relative.format(days, "day") : day.format(at);
    return `${date.charAt(0).toUpperCase()}${date.slice(1)} ${clock.format(at)}`;
  }

  function windowText(start, end) {
    if (!start) return "";
    return end ? `${when(start)}–${clock.format(new Date(end))}` : when(start);
  }

  // ---- the screen-pop socket ------------------------------------------------------------

  async function connect() {
    const s = session();
    if (!s) return;
    clearTimeout(state.timer);
    setStatus("connecting…");
    let ticket;
    try {
      ticket = (await api("POST", `v1/agents/${encodeURIComponent(s.agent)}/screenpop/tickets`)).ticket;
    } catch (error) {
      if (error.status === 401 || error.status === 403) return signOut(error.message);
      return retryLater();
    }
    // on a (re)load, ask for the last pop again too so the current call is back on screen;
    // on a reconnect of a page that is showing it, only for what came after
    const seen = store.getItem("prm.agent.seq");
    const since = seen && !state.call ? String(BigInt(seen) - 1n) : seen;
    const address = url(`v1/agents/${encodeURIComponent(s.agent)}/screenpop`);
    address.protocol = address.protocol === "https:" ? "wss:" : "ws:";
    address.searchParams.set("ticket", ticket);
    if (since) address.searchParams.set("since", since);
    const socket = new WebSocket(address, ["prm.screenpop.v1"]);
    state.socket = socket;
    socket.onmessage = (msg) => {
      let message;
      try {
        message = JSON.parse(msg.data);
      } catch (_) {
        return;
      }
      alive();
      if (message.type === "hello") {
        state.retry = 0;
        state.heartbeatMs = (message.heartbeat_s || 20) * 1000;
        if (!since) store.setItem("prm.agent.seq", String(message.seq));
        setStatus("connected", "live");
      } else if (message.type === "screen_pop") {
        store.setItem("prm.agent.seq", String(message.seq));
        showPop(message);
      } else if (message.type === "fulfillment_updated") {
        store.setItem("prm.agent.seq", String(message.seq));
        updateFulfillment(message);
      }
    };
    socket.onclose = () => {
      if (state.socket === socket) {
        state.socket = null;
        retryLater();
      }
    };
  }

  // no message for three heartbeats: the line is dead even if the browser has not noticed
  function alive() {
    clearTimeout(state.watchdog);
    state.watchdog = setTimeout(() => state.socket && state.socket.close(), state.heartbeatMs * 3);
  }

  function retryLater() {
    if (!session()) return;
    clearTimeout(state.watchdog);
    setStatus("reconnecting…", "down");
    const delay = Math.min(15000, 500 * 2 ** state.retry++) * (0.5 + Math.random() / 2);
    state.timer = setTimeout(connect, delay);
  }

  // ---- showing a pop --------------------------------------------------------------------

  function callerName(customer) {
    const t = customer.traits || {};
    const name = t.name || [t.first_name, t.last_name].filter(Boolean).join(" ");
    if (name) return name;
    const phone = (customer.identities || []).find((i) => i.namespace === "phone");
    return phone ? phone.value : "Unknown caller";
  }

  function languageName(code) {
    if (!code) return "";
    try {
      return new Intl.DisplayNames(undefined, { type: "language" }).of(code) || code;
    } catch (_) {
      return code;
    }
  }

  // a summary the hub made (prm_core.labels), else the wire name as a last resort
  const said = (event) => event.summary || String(event.type || "").replace(/[._]/g, " ");

  function fill(list, items, render, empty) {
    list.replaceChildren(...items.map(render));
    if (!items.length) list.replaceChildren(el("li", empty || "None", "none"));
  }

  function line(whenIso, text) {
    const item = el("li");
    const at = when(whenIso);
    if (at) item.append(el("span", `${at}, `, "when"));
    item.append(document.createTextNode(text));
    return item;
  }

  // a partner answered after the pop (a technician booked): update the caller's list in place
  function updateFulfillment(message) {
    const customer = state.call && state.call.customer;
    if (!customer || ![customer.id, state.call.customerId].includes(message.customer_id)) return;
    const others = (customer.fulfillments || []).filter((f) => f.id !== message.fulfillment.id);
    customer.fulfillments = [message.fulfillment, ...others];
    showFulfillments(customer);
  }

  function showFulfillments(customer) {
    fill(
      $("fulfillments"),
      customer.fulfillments || [],
      (f) => {
        const d = f.data || {};
        const booked = windowText(d.window_start, d.window_end);
        const what = String(f.action || "work").replace(/_/g, " ");
        return el("li", `${what} with ${f.partner}: ${f.status}${booked ? `, ${booked}` : ""}`);
      },
      "No service work booked",
    );
  }

  function showPop(pop) {
    const customer = pop.customer || {};
    state.call = { id: pop.call_id, customerId: pop.customer_id, customer };
    $("waiting").hidden = true;
    $("pop").hidden = false;
    $("caller-name").textContent = callerName(customer);
    const tier = $("caller-tier");
    tier.textContent = customer.tier || "no tier";
    tier.className = `tier ${customer.tier || ""}`;
    const traits = customer.traits || {};
    $("caller-language").textContent = languageName(traits.language || traits.locale);
    $("caller-ids").textContent = (customer.identities || []).map((i) => i.value).join(" · ");
    $("call-queue").textContent = `Call ${pop.call_id} · queue ${pop.queue || "-"} · ${when(pop.offered_at)}`;
    fill(
      $("requests"),
      customer.open_service_requests || [],
      (r) => {
        const booked = windowText(r.window_start, r.window_end);
        const item = el("li", r.summary || "service request");
        const bits = [`opened ${when(r.opened_at)} at ${r.touchpoint}`];
        if (booked) bits.push(`technician booked ${booked}`);
        item.append(el("div", bits.join("; "), "muted"));
        return item;
      },
      "No open request",
    );
    fill($("offers"), customer.offers || [], (o) => el("li", o.title || o.code), "Nothing to offer");
    fill(
      $("recent"),
      customer.recent_contacts || [],
      (c) => line(c.opened_at, `${c.touchpoint}: ${c.headline || c.intent || "contact"}`),
      "No other contact lately",
    );
    showFulfillments(customer);
    fill(
      $("timeline"),
      (customer.timeline || []).slice(0, 20),
      (e) => line(e.occurred_at, `${e.touchpoint}: ${said(e)}`),
    );
    $("saved").textContent = "";
    $("save-error").textContent = "";
    $("note").value = "";
    $("outcome").value = "";
  }

  // ---- recording notes and outcomes -----------------------------------------------------

  async function record(type, fields) {
    const { agent } = session();
    const event = { id: `agent-${newId()}`, type, call_id: state.call.id, ...fields };
    await api("POST", `v1/agents/${encodeURIComponent(agent)}/events`, event);
    const words = type === "agent.note" ? `agent's note: ${fields.text}` : `call outcome: ${fields.outcome}`;
    $("timeline").prepend(line(new Date().toISOString(), `callcenter: ${words}`));
  }

  async function submitted(form, type, fields, done) {
    const button = form.querySelector("button");
    button.disabled = true;
    $("saved").textContent = "";
    $("save-error").textContent = "";
    try {
      await record(type, fields);
      $("saved").textContent = done;
      form.reset();
    } catch (error) {
      $("save-error").textContent = `Not saved: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  }

  // ---- signing in and out ---------------------------------------------------------------

  function signedIn() {
    const s = session();
    $("login").hidden = Boolean(s);
    $("desk").hidden = !s;
    $("who").hidden = !s;
    if (s) {
      $("agent-name").textContent = s.agent;
      connect();
    } else {
      $("login-code").focus();
    }
  }

  async function signIn(code) {
    $("login-error").textContent = "";
    try {
      const answer = await api("POST", "v1/agents/session", { code }, null);
      store.setItem("prm.agent.token", answer.token);
      store.setItem("prm.agent.id", answer.agent_id);
      store.removeItem("prm.agent.seq");
    } catch (error) {
      $("login-error").textContent = `Not signed in: ${error.message}`;
    }
    signedIn();
  }

  function signOut(reason) {
    const s = session();
    if (s) api("DELETE", "v1/agents/session", undefined, s.token).catch(() => {});
    for (const item of ["prm.agent.token", "prm.agent.id", "prm.agent.seq"]) store.removeItem(item);
    const socket = state.socket;
    state.socket = null;
    state.call = null;
    if (socket) socket.close();
    clearTimeout(state.timer);
    clearTimeout(state.watchdog);
    $("pop").hidden = true;
    $("waiting").hidden = false;
    $("login-error").textContent = reason ? `Signed out: ${reason}` : "";
    signedIn();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const code = $("login-code").value.trim();
      $("login-code").value = "";
      signIn(code);
    });
    $("logout").addEventListener("click", () => signOut());
    $("note-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      submitted(ev.target, "agent.note", { text: $("note").value }, "Note saved");
    });
    $("outcome-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      submitted(ev.target, "call.outcome", { outcome: $("outcome").value }, "Outcome saved");
    });
    // a sign-in link: agent#code=...; the code leaves the address bar (and history) at once
    const code = new URLSearchParams(location.hash.slice(1)).get("code");
    if (code) {
      history.replaceState(null, "", location.pathname + location.search);
      signIn(code);
    } else {
      signedIn();
    }
  });
})();
