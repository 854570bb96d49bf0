/*! prm.js: the PRM hub's browser tracker; no dependencies, Segment message format. See docs/web.md.
 *  <script src="https://hub.example.com/prm.js" data-key="PUBLIC touchpoint:web KEY" async></script> */
((window, document) => {
  "use strict";
  const VERSION = "1.0.0";
  const AID = "prm_aid"; // the anonymous id: localStorage, and a first-party cookie (1 year)
  const UID = "prm_uid"; // the userId given to identify
  const QUEUE = "prm_queue"; // messages not yet known to be delivered
  const FLUSH_MS = 200; // calls this close together go in one batch
  const MAX_QUEUE = 1000; // the oldest messages go past this
  const MAX_MESSAGE = 32000; // the hub refuses a message over 32 KB, and with it its batch
  const MAX_BODY = 60000; // keepalive fetch and sendBeacon carry at most 64 KB
  const MAX_BATCH = 100;

  const stub = window.prm;
  if (stub && stub.loaded) return; // included twice
  const script = document.currentScript || document.querySelector('script[src*="prm.js"][data-key]');
  const attr = (name) => (script && script.getAttribute(name)) || "";
  const config = { key: attr("data-key"), host: attr("data-host"), autoPage: attr("data-auto-page") !== "false" };
  if (!config.host) {
    try {
      config.host = new URL(".", script.src).href; // where prm.js came from: the hub
    } catch (e) {
      config.host = location.origin;
    }
  }
  const endpoint = () => config.host.replace(/\/+$/, "") + "/v1/batch";
  const isObject = (x) => x !== null && typeof x === "object" && !Array.isArray(x);

  // ---- first-party storage ----
  let local = null;
  try {
    local = window.localStorage;
    local.setItem("prm_test", "1");
    local.removeItem("prm_test");
  } catch (e) {
    local = null;
  }
  let memoryQueue = [];

  function getId(name) {
    try {
      const value = local && local.getItem(name);
      if (value) return value;
    } catch (e) {}
    const m = document.cookie.match(new RegExp(`(?:^|; )${name}=([^;]*)`));
    return m ? decodeURIComponent(m[1]) : null;
  }

  function setId(name, value) {
    try {
      if (local) value === null ? local.removeItem(name) : local.setItem(name, value);
    } catch (e) {}
    const flags = `; path=/; SameSite=Lax${location.protocol === "https:" ? "; Secure" : ""}`;
    document.cookie = `${name}=${encodeURIComponent(value || "")}; max-age=${value === null ? 0 : 31536000}${flags}`;
  }

  function readQueue() {
    if (!local) return memoryQueue.slice();
    try {
      const queue = JSON.parse(local.getItem(QUEUE) || "[]");
      return Array.isArray(queue) ? queue : [];
    } catch (e) {
      return [];
    }
  }

  function writeQueue(queue) {
    queue = queue.slice(-MAX_QUEUE);
    if (local) {
      try {
        return queue.length ? local.setItem(QUEUE, JSON.stringify(queue)) : local.removeItem(QUEUE);
      } catch (e) {
        local = null; // full or gone: the queue lives in memory for this page
      }
    }
    memoryQueue = queue;
  }

  function dequeue(ids) {
    const sent = new Set(ids);
    writeQueue(readQueue().filter((m) => !sent.has(m.messageId)));
  }

  function uuid() {
    const c = window.crypto;
    if (c && c.randomUUID) return c.randomUUID();
    const b = new Uint8Array(16);
    if (c && c.getRandomValues) c.getRandomValues(b);
    else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    const h = Array.from(b, (x) => (x + 256).toString(16).slice(1)).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function anonymousId() {
    let id = getId(AID);
    if (!id) setId(AID, (id = uuid()));
    return id;
  }

  // ---- messages ----
  let referrer = document.referrer;
  let lastUrl = null;
  const pageInfo = () => ({
    path: location.pathname,
    url: location.href,
    title: document.title,
    referrer: referrer,
    search: location.search,
  });
  // the size the hub measures: Python's json.dumps adds spaces and writes non-ASCII as \uXXXX
  const hubSize = (json) => json.length + (json.match(/[,:]/g) || []).length + 5 * (json.match(/[^\0-\x7f]/g) || []).length;

  function enqueue(type, fields) {
    const message = Object.assign(
      {
        type: type,
        messageId: uuid(),
        anonymousId: anonymousId(),
        timestamp: new Date().toISOString(),
        context: {
          page: pageInfo(),
          userAgent: navigator.userAgent,
          locale: navigator.language,
          library: { name: "prm.js", version: VERSION },
        },
      },
      fields
    );
    const userId = getId(UID);
    if (userId) message.userId = userId;
    if (hubSize(JSON.stringify(message)) > MAX_MESSAGE) return console.warn("prm.js: not sent, over 32 KB:", type);
    writeQueue(readQueue().concat([message]));
    schedule(FLUSH_MS);
  }

  const api = {
    loaded: true,
    VERSION: VERSION,
    track(event, properties) {
      if (typeof event !== "string" || !event) return console.warn("prm.js: track needs an event name");
      enqueue("track", { event: event, properties: isObject(properties) ? properties : {} });
    },
    identify(userId, traits) {
      if (isObject(userId)) [userId, traits] = [null, userId];
      if (userId !== null && userId !== undefined && userId !== "") setId(UID, String(userId));
      enqueue("identify", { traits: isObject(traits) ? traits : {} });
    },
    page(name, properties) {
      if (isObject(name)) [name, properties] = [null, name];
      const fields = { properties: Object.assign(pageInfo(), isObject(properties) ? properties : {}) };
      if (name) fields.name = String(name);
      lastUrl = location.href.split("#")[0];
      enqueue("page", fields);
    },
    reset() {
      // a log out: forget the user, start a new anonymous id
      setId(UID, null);
      setId(AID, null);
    },
    init(options) {
      if (isObject(options)) Object.assign(config, options);
      schedule(0);
    },
    anonymousId: anonymousId,
    flush: () => flush(),
    push(call) {
      // a stub entry: [method, ...arguments]
      if (Array.isArray(call) && call[0] !== "push" && typeof api[call[0]] === "function") api[call[0]](...call.slice(1));
    },
  };

  // ---- delivery ----
  let timer = 0;
  let sending = false;
  let failures = 0;
  let reachable = true; // false from a failed send until one succeeds
  const beaconed = new Set();

  function schedule(delay) {
    if (!timer) timer = setTimeout(flush, delay);
  }

  function take(queue) {
    // the first messages that fit in one request
    const batch = [];
    let size = 200;
    for (const message of queue) {
      size += JSON.stringify(message).length + 1;
      if (batch.length && (batch.length >= MAX_BATCH || size > MAX_BODY)) break;
      batch.push(message);
    }
    return batch;
  }

  const body = (batch) => JSON.stringify({ batch: batch, sentAt: new Date().toISOString(), writeKey: config.key });

  async function flush() {
    clearTimeout(timer);
    timer = 0;
    if (sending || !config.key) return;
    const batch = take(readQueue());
    if (!batch.length) return;
    const url = endpoint();
    let done = false;
    sending = true;
    try {
      // text/plain keeps it a simple request (no CORS preflight); the key is in the body
      const response = await window.fetch(url, {
        method: "POST",
        mode: "cors", // the hub's tracking routes answer with Access-Control-Allow-Origin: *
        credentials: "omit",
        keepalive: true,
        headers: { "Content-Type": "text/plain" },
        body: body(batch),
      });
      // a 4xx other than 408 and 429 will not succeed on a retry: drop it; 5xx, 408, 429: retry
      const s = response.status;
      done = response.type === "opaque" || response.ok || (s >= 400 && s < 500 && s !== 408 && s !== 429);
      if (!response.ok && response.type !== "opaque") console.warn("prm.js: the hub answered", s);
    } catch (e) {
      // unreachable: the messages stay queued
    }
    sending = false;
    reachable = done;
    if (done) {
      failures = 0;
      dequeue(batch.map((m) => m.messageId));
      if (readQueue().length) schedule(0);
    } else {
      failures += 1;
      schedule(Math.min(60000, 1000 * 2 ** Math.min(failures - 1, 6)));
    }
  }

  function flushOnHide() {
    if (!config.key || !navigator.sendBeacon) return;
    let queue = readQueue().filter((m) => !beaconed.has(m.messageId));
    const sent = [];
    while (queue.length) {
      const batch = take(queue);
      let queued = false;
      try {
        queued = navigator.sendBeacon(endpoint(), body(batch)); // text/plain;charset=UTF-8
      } catch (e) {}
      if (!queued) break;
      for (const m of batch) {
        sent.push(m.messageId);
        beaconed.add(m.messageId);
      }
      queue = queue.slice(batch.length);
    }
    // a beacon is fire-and-forget: when the hub was unreachable at the last try the messages stay
    // queued and the next page sends them again (their messageIds make a repeat a duplicate)
    if (sent.length && reachable) dequeue(sent);
  }

  function onNavigate() {
    const url = location.href.split("#")[0];
    if (url === lastUrl) return;
    referrer = lastUrl || referrer;
    api.page();
  }

  // ---- start ----
  const pending = Array.isArray(stub) ? stub.slice() : [];
  window.prm = api;
  if (config.autoPage) {
    for (const method of ["pushState", "replaceState"]) {
      const original = history[method];
      history[method] = function () {
        const result = original.apply(this, arguments);
        onNavigate();
        return result;
      };
    }
    window.addEventListener("popstate", onNavigate);
  }
  document.addEventListener("visibilitychange", () => document.visibilityState === "hidden" && flushOnHide());
  window.addEventListener("pagehide", flushOnHide);
  window.addEventListener("online", () => {
    clearTimeout(timer);
    timer = 0;
    schedule(0);
  });
  for (const call of pending.filter((c) => c && c[0] === "init")) api.push(call);
  for (const call of pending.filter((c) => c && c[0] !== "init")) api.push(call);
  if (config.autoPage) api.page();
  if (readQueue().length) schedule(FLUSH_MS); // what an earlier page left undelivered
})(window, document);
