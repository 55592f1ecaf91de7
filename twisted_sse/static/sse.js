// twisted_sse's browser client, one stream shared by the tabs; types: sse.d.ts.
const g = globalThis;
const clock = { now: () => Date.now(), setTimeout: (f, ms) => setTimeout(f, ms), clearTimeout: (h) => clearTimeout(h) };
const later = (f) => Promise.resolve().then(f);
const randomId = () => String(Math.random()).slice(2);

// A handler's exception must stop neither the stream nor other handlers.
function call(f, arg) {
  try { f?.(arg); } catch (error) { (g.reportError ?? console.error)(error); }
}

/** The WHATWG event-stream parsing rules, fed with decoded text. */
export class Parser {
  constructor(lastEventId = "") {
    this.lastEventId = this._id = lastEventId;
    this._rest = this._data = this._type = "";
    this._bom = true;
  }

  feed(chunk) {
    if (!chunk) return;
    if (this._bom) {
      this._bom = false;
      if (chunk[0] === "\uFEFF") chunk = chunk.slice(1);
    }
    // A chunk ending in CR has ended its line (an idle stream must not hold
    // an event back); an LF starting the next chunk belongs to that CR.
    let start = this._cr && chunk[0] === "\n" ? 1 : 0;
    this._cr = false;
    const text = this._rest + chunk;
    const ends = /\r\n?|\n/g;
    ends.lastIndex = start;
    for (let m; (m = ends.exec(text)); ) {
      this._line(text.slice(start, m.index));
      start = ends.lastIndex;
      this._cr = m[0] === "\r" && start === text.length;
    }
    this._rest = text.slice(start);
  }

  _line(line) {
    if (!line) return this._dispatch();
    if (line[0] === ":") return;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (name === "event") this._type = value;
    else if (name === "data") this._data += value + "\n";
    else if (name === "id" && !value.includes("\0")) this._id = value;
    else if (name === "retry" && /^\d+$/.test(value)) call(this.onretry, +value);
  }

  _dispatch() {
    // The id is committed even when nothing fires, and carries over.
    const { _data: data, _type: type, _id: id } = this;
    this.lastEventId = id;
    this._data = this._type = "";
    if (data) call(this.onevent, { type: type || "message", data: data.slice(0, -1), id });
    call(this.onid, id);
  }
}

/** Full-jitter back-off: a delay in [0, min(max, base * 2^attempt)). */
export class Backoff {
  constructor(max = 30000, random = Math.random) {
    Object.assign(this, { max, random, base: 1000, attempt: 0 });
  }

  next() {
    // At least 100 ms: a retry: of 0 would make failures a busy loop.
    const cap = Math.min(this.max, Math.max(100, this.base) * 2 ** this.attempt);
    this.attempt++;
    return Math.floor(this.random() * cap);
  }

  reset() { this.attempt = 0; }
}

/** Whether a channel name or a `prefix.*` pattern covers `channel`. */
export const matches = (pattern, channel) =>
  pattern.endsWith(".*") ? channel.startsWith(pattern.slice(0, -1)) : pattern === channel;

/** `url` (its query kept) with the channels, sorted, once each, and the cursor. */
export function streamURL(url, { channels = null, lastEventId = "" } = {}) {
  const u = new URL(url, g.location?.href);
  const q = u.searchParams;
  if (channels) {
    for (const c of [...new Set(channels)].sort()) q.append("channel", c);
    q.set("envelope", "1");
  }
  q.delete("lastEventId");
  if (lastEventId) q.set("lastEventId", lastEventId);
  return u.href;
}

// Leader election: a Web Lock held until close; else a localStorage lease renewed
// every 500 ms, taken after 2 s of silence; else (no channel) each tab leads.
export class Election {
  constructor({ name, locks, channel, storage, clock: c = clock, id = randomId(), onchange }) {
    Object.assign(this, { name, id, onchange, leader: false, closed: false, _c: c, _s: storage });
    if (!channel || (!locks && !storage)) this._set(true);
    else if (locks) {
      const held = () => {
        if (this.closed) return;
        this._set(true);
        return new Promise((resolve) => (this._release = resolve));
      };
      later(() => locks.request(name, { mode: "exclusive" }, held)).catch(() => this.closed || this._set(true));
    } else this._tick();
  }

  _set(leader) {
    if (leader !== this.leader) call(this.onchange, (this.leader = leader));
  }

  _lease() {
    try { return JSON.parse(this._s.getItem(this.name)); } catch {}
  }

  // localStorage has no compare-and-set: a tab writes its claim and leads
  // if the claim is still there one tick later (the last writer wins).
  _tick() {
    const now = this._c.now();
    const lease = this._lease();
    const mine = lease?.id === this.id;
    if (mine || !lease || now - lease.t > 2000) this._s.setItem(this.name, JSON.stringify({ id: this.id, t: now }));
    this._set(mine);
    this._timer = this._c.setTimeout(() => this._tick(), 500);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.leader = false;
    this._release?.();
    this._c.clearTimeout(this._timer);
    if (this._lease()?.id === this.id) this._s.removeItem(this.name); // no 2 s wait
  }
}

// Status 200 and a Content-Type whose essence is text/event-stream.
const isStream = (res) => res?.status === 200 && /^text\/event-stream\s*(;|$)/i.test(res.headers.get("content-type"));

// The connection, the election and the relay between tabs.  Wants are channels
// (SSEClient) or event types (SSEStream: EventSource listeners).
class Shared {
  constructor(url, options, channels) {
    const o = { transport: "eventsource", share: true, maxRetry: 30000, ...options };
    const { navigator: n, BroadcastChannel, EventSource, fetch } = g;
    let storage;
    try { storage = g.localStorage; } catch {} // a sandboxed frame
    const env = { clock, random: Math.random, locks: n?.locks, storage, BroadcastChannel, EventSource };
    Object.assign(env, { fetch, ...o.env });
    Object.assign(this, { _o: o, _env: env, _c: env.clock, _channels: channels, cursor: "", state: "connecting" });
    Object.assign(this, { leader: false, closed: false, _id: randomId(), _peers: new Map(), _seen: [], _union: [] });
    this.url = new URL(url, g.location?.href).href;
    this._backoff = new Backoff(o.maxRetry, env.random);
    const key = "twisted-sse " + (o.key ?? `${this.url} ${o.transport}`);
    if (o.share && env.BroadcastChannel) {
      this._bc = new env.BroadcastChannel(key);
      this._bc.addEventListener("message", (e) => this.closed || this._message(e.data));
      later(() => this._beat());
    }
    g.addEventListener?.("pagehide", (this._hide = () => this.close()));
    const onchange = (leader) => this._lead(leader);
    this._election = new Election({ ...env, name: key, channel: this._bc, id: this._id, onchange });
  }

  _post(message) {
    try { this._bc?.postMessage(message); } catch {} // closed
  }

  _want() {
    this._post({ t: "want", from: this._id, wants: [...this._wants()] });
  }

  _lead(leader) {
    this.leader = leader;
    this._key = null;
    // Until followers answer, follow the last leader's set: an exact resume for all.
    if (leader) this._peers.set("", { wants: this._union, t: this._c.now() });
    else this._disconnect();
    this._setState("connecting");
    this._changed();
  }

  // Followers heartbeat each second; the leader forgets one silent for 3 s.
  _beat() {
    if (this.closed) return;
    if (!this.leader) this._want();
    else {
      for (const [id, peer] of this._peers) if (this._c.now() - peer.t > 3000) this._peers.delete(id);
      this._changed();
    }
    this._beating = this._c.setTimeout(() => this._beat(), 1000);
  }

  _message(m) {
    const t = m?.t;
    if (this.leader) {
      if (t === "want") {
        if (!this._peers.has(m.from)) this._setState(this.state); // tell the newcomer
        this._peers.set(m.from, { wants: m.wants, t: this._c.now() });
      }
      this._changed();
    } else if (t === "event") this._receive(m.event);
    else if (t === "state") {
      this._union = m.union;
      this.cursor = m.cursor || this.cursor;
      this._setState(m.state);
    }
  }

  // Changes of wants are applied once, at the end of the current task.
  _changed() {
    this._pending ||= later(() => {
      this._pending = null;
      if (this.closed) return;
      if (!this.leader) return this._want();
      const union = [...this._peers.values()].flatMap((peer) => peer.wants);
      this._union = [...new Set([...this._wants(), ...union])].sort();
      const key = this._union.join("\n");
      if (key === this._key) return;
      this._key = key;
      this._setState(this.state);
      if (this._channels) this._disconnect();
      else if (this._conn || this._timer) return this._conn?.listen?.();
      this._connect();
    });
  }

  _setState(state) {
    if (this.leader) this._post({ t: "state", state, cursor: this.cursor, union: this._union });
    if (state !== this.state) call(this._o.onstatechange, (this.state = state));
  }

  _connect() {
    this._timer = null;
    if (this.closed || !this.leader || (this._channels && !this._union.length)) return;
    this._setState("connecting");
    const url = streamURL(this.url, { channels: this._channels && this._union, lastEventId: this.cursor });
    const conn = (this._conn = {});
    (this._o.transport === "fetch" ? this._fetch : this._eventSource).call(this, url, conn);
  }

  _disconnect() {
    this._conn?.close();
    this._conn = null;
    this._c.clearTimeout(this._timer);
    this._timer = null;
  }

  _retry(conn) {
    if (conn !== this._conn) return;
    this._disconnect();
    this._setState("connecting");
    this._timer = this._c.setTimeout(() => this._connect(), this._backoff.next());
  }

  _opened(conn) {
    if (conn !== this._conn) return;
    conn.open = true;
    this._backoff.reset();
    this._setState("open");
  }

  // No answer or a 5xx is retried, 401/403 go to onauth, the rest stops.
  async _failed(conn, res) {
    if (conn !== this._conn) return;
    const status = res?.status;
    if (!res || status >= 500) return this._retry(conn);
    const auth = status === 401 || status === 403;
    const body = auth ? await res.json().catch(() => null) : null;
    if (conn !== this._conn) return;
    this._disconnect();
    let again = false;
    try { again = auth && (await this._o.onauth?.(status, body)); } catch {}
    if (this.closed || this._conn || !this.leader) return;
    if (!again) return this._setState("closed");
    if (typeof again === "object") this._o.headers = again;
    this._connect();
  }

  _request(url, headers, signal) {
    headers = { Accept: "text/event-stream", ...headers };
    const credentials = this._o.withCredentials ? "include" : "same-origin";
    return this._env.fetch.call(g, url, { headers, credentials, signal }).catch(() => null);
  }

  async _fetch(url, conn) {
    const abort = new AbortController();
    conn.close = () => abort.abort();
    try {
      const h = this._o.headers;
      const res = await this._request(url, await (typeof h === "function" ? h() : h), abort.signal);
      if (!isStream(res)) return this._failed(conn, res);
      this._opened(conn);
      const live = () => conn === this._conn;
      const parser = Object.assign(new Parser(this.cursor), {
        onretry: (ms) => (this._backoff.base = ms),
        onid: (id) => live() && this._cursor(id),
        onevent: (event) => live() && this._receive(event),
      });
      // The parser removes the one BOM the stream may start with.
      const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
      const reader = res.body.getReader();
      for (let r; !(r = await reader.read()).done; ) parser.feed(decoder.decode(r.value, { stream: true }));
    } catch {} // a network error, or our abort
    this._retry(conn); // the stream ended
  }

  _eventSource(url, conn) {
    const source = new this._env.EventSource(url, { withCredentials: this._o.withCredentials });
    const on = (e) => conn === this._conn && this._receive({ type: e.type, data: e.data, id: e.lastEventId });
    conn.close = () => source.close();
    // Adding a listener twice adds it once.
    const types = () => ["message", "history-lost", ...(this._channels ? ["cursor"] : this._union)];
    conn.listen = () => types().forEach((type) => source.addEventListener(type, on));
    conn.listen();
    source.onopen = () => this._opened(conn);
    source.onerror = () => {
      if (conn !== this._conn) return;
      source.close(); // the back-off is ours, not the browser's
      if (conn.open) this._retry(conn);
      else this._probe(url, conn);
    };
  }

  // An EventSource does not say why it failed: ask again with fetch.
  async _probe(url, conn) {
    const res = await this._request(url);
    if (!isStream(res)) return this._failed(conn, res);
    res.body.cancel().catch(() => {});
    this._retry(conn);
  }

  _cursor(id) {
    if (!id || id === this.cursor) return;
    this.cursor = id;
    this._setState(this.state); // tells the followers
  }

  // A new leader may replay the last event or two: a seen id is dropped.
  _receive(event) {
    const id = event.id;
    if (id) {
      if (this._seen.includes(id)) return;
      this._seen = [...this._seen.slice(-63), (this.cursor = id)];
    }
    if (this.leader) this._post({ t: "event", event });
    this._route(event);
  }

  close() {
    if (this.closed) return;
    this._disconnect();
    if (!this.leader) this._post({ t: "want", from: this._id, wants: [] });
    this.closed = true;
    this._c.clearTimeout(this._beating);
    this._election.close();
    this._bc?.close();
    g.removeEventListener?.("pagehide", this._hide);
    this.leader = false;
    this._setState("closed");
  }
}

/** Channels of a twisted_sse hub (its /subscribe URL), routed to handlers. */
export class SSEClient extends Shared {
  constructor(url, options) {
    super(url, options, true);
    this._subs = new Set();
  }

  subscribe(names, handler) {
    const sub = { names: [].concat(names), handler };
    this._subs.add(sub);
    this._changed();
    return { close: () => this._subs.delete(sub) && this._changed() };
  }

  _wants() {
    return [...this._subs].flatMap((sub) => sub.names);
  }

  _route(event) {
    let body;
    try { body = JSON.parse(event.data); } catch {}
    if (event.type === "history-lost") return call(this._o.onhistorylost, body);
    if (!body?.channel) return; // not an envelope
    const e = { channel: body.channel, type: body.event ?? "message", data: body.data, id: event.id };
    for (const sub of [...this._subs]) {
      if (this._subs.has(sub) && sub.names.some((p) => matches(p, e.channel))) call(sub.handler, e);
    }
  }
}

/** A plain event stream (no channels), shared across tabs like SSEClient. */
export class SSEStream extends Shared {
  constructor(url, options) {
    super(url, options, false);
    this._handlers = new Map();
  }

  on(type, handler) {
    const set = this._handlers.get(type) ?? new Set();
    this._handlers.set(type, set.add(handler));
    this._changed();
    return () => set.delete(handler);
  }

  _wants() {
    return [...this._handlers.keys()];
  }

  _route({ type, data, id }) {
    for (const handler of [...(this._handlers.get(type) ?? [])]) call(handler, { type, data, id });
  }
}
