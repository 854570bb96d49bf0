// The agent desktop: sign in with a touchpoint:callcenter key (kept in this tab's
// sessionStorage only), receive screen pops on a WebSocket opened with a one-time ticket,
// record notes and the call's outcome as CTI events. Everything from the hub is shown with
// textContent, never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const store = window.sessionStorage;
  const state = { socket: null, call: null, retry: 0, watchdog: null, heartbeatMs: 20000, timer: null };

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function credentials() {
    const key = store.getItem("prm.agent.key");
    const agent = store.getItem("prm.agent.id");
    return key && agent ? { key, agent } : null;
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

  async function api(method, path, body) {
    const { key } = credentials();
    const resp = await fetch(path, {
      method,
      headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    const answer = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const error = new Error((answer.error && answer.error.message) || `HTTP ${resp.status}`);
      error.status = resp.status;
      throw error;
    }
    return answer;
  }

  // ---- the screen-pop socket ------------------------------------------------------------

  async function connect() {
    const creds = credentials();
    if (!creds) return;
    clearTimeout(state.timer);
    setStatus("connecting…");
    let ticket;
    try {
      ticket = (await api("POST", `/v1/agents/${encodeURIComponent(creds.agent)}/screenpop/tickets`)).ticket;
    } catch (error) {
      if (error.status === 401 || error.status === 403) return signOut(error.message);
      return retryLater();
    }
    // on a (re)load, ask for the last pop again too so the current call is back on screen;
    // on a reconnect of a page that is showing it, only for what came after
    const seen = store.getItem("prm.agent.seq");
    const since = seen && !state.call ? String(BigInt(seen) - 1n) : seen;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let url = `${scheme}//${location.host}/v1/agents/${encodeURIComponent(creds.agent)}/screenpop?ticket=${encodeURIComponent(ticket)}`;
    if (since) url += `&since=${encodeURIComponent(since)}`;
    const socket = new WebSocket(url, ["prm.screenpop.v1"]);
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
    if (!credentials()) return;
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

  function describe(event) {
    const data = event.data || {};
    const bits = ["menu", "digits", "queue", "text", "outcome", "issue", "product_id"]
      .filter((k) => data[k] !== undefined && data[k] !== null && typeof data[k] !== "object")
      .map((k) => `${k}: ${data[k]}`);
    return bits.length ? `${event.type} (${bits.join(", ")})` : event.type;
  }

  function fill(list, items, render) {
    list.replaceChildren(...items.map(render));
    if (!items.length) list.replaceChildren(el("li", "none", "none"));
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
    fill($("fulfillments"), customer.fulfillments || [], (f) => {
      const d = f.data || {};
      const when = d.window_start ? ` ${d.window_start} – ${d.window_end || ""}` : "";
      return el("li", `${f.action} with ${f.partner}: ${f.status}${when}`);
    });
  }

  function showPop(pop) {
    const customer = pop.customer || {};
    state.call = { id: pop.call_id, customerId: pop.customer_id, customer };
    $("waiting").hidden = true;
    $("pop").hidden = false;
    $("call-id").textContent = pop.call_id;
    $("caller-name").textContent = callerName(customer);
    const tier = $("caller-tier");
    tier.textContent = customer.tier || "no tier";
    tier.className = `tier ${customer.tier || ""}`;
    $("caller-ids").textContent = (customer.identities || []).map((i) => `${i.namespace}: ${i.value}`).join(" · ");
    $("call-queue").textContent = `Queue ${pop.queue || "-"} · offered ${pop.offered_at}`;
    fill($("requests"), customer.open_service_requests || [], (r) => {
      const first = (r.events || [])[0];
      return el("li", `${r.touchpoint} · ${r.opened_at}${first ? ` · ${describe(first)}` : ""}`);
    });
    showFulfillments(customer);
    const recent = $("recent");
    recent.replaceChildren(
      ...(customer.recent_contacts || []).map((c) => {
        const box = el("div", null, "contact");
        box.append(el("strong", `${c.touchpoint} · ${c.opened_at}`), el("small", c.outcome ? ` ${c.outcome}` : ""));
        const steps = el("ol");
        steps.append(...(c.events || []).map((e) => el("li", describe(e))));
        box.append(steps);
        return box;
      }),
    );
    if (!recent.children.length) recent.append(el("p", "No other contact recently."));
    fill($("offers"), customer.offers || [], (o) => el("li", o.title));
    fill($("timeline"), (customer.timeline || []).slice(0, 15), (e) =>
      el("li", `${e.occurred_at} ${e.touchpoint}: ${describe(e)}`),
    );
    $("saved").textContent = "";
    $("note").value = "";
    $("outcome").value = "";
  }

  // ---- recording notes and outcomes -----------------------------------------------------

  async function record(type, data) {
    const { agent } = credentials();
    const event = {
      id: `agent-${newId()}`,
      type,
      occurred_at: new Date().toISOString(),
      data: { call_id: state.call.id, agent_id: agent, ...data },
    };
    await api("POST", "/v1/touchpoints/callcenter/events", { events: [event] });
    $("timeline").prepend(el("li", `${event.occurred_at} callcenter: ${describe(event)}`));
  }

  async function submitted(form, type, data, done) {
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      await record(type, data);
      $("saved").textContent = done;
      form.reset();
    } catch (error) {
      $("saved").textContent = `Not saved: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  }

  // ---- signing in and out ---------------------------------------------------------------

  function signedIn() {
    const creds = credentials();
    $("login").hidden = Boolean(creds);
    $("desk").hidden = !creds;
    $("who").hidden = !creds;
    if (creds) {
      $("agent-name").textContent = creds.agent;
      connect();
    }
  }

  function signOut(reason) {
    for (const item of ["prm.agent.key", "prm.agent.id", "prm.agent.seq"]) store.removeItem(item);
    const socket = state.socket;
    state.socket = null;
    if (socket) socket.close();
    clearTimeout(state.timer);
    clearTimeout(state.watchdog);
    $("login-error").textContent = reason || "";
    signedIn();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      store.setItem("prm.agent.key", $("login-key").value.trim());
      store.setItem("prm.agent.id", $("login-agent").value.trim());
      $("login-key").value = "";
      signedIn();
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
    signedIn();
  });
})();
