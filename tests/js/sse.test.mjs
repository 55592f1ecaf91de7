// Unit tests of twisted_sse/static/sse.js under Node's test runner, with fakes
// for what only a browser has (EventSource, Web Locks, BroadcastChannel,
// localStorage) and a fake clock.
//
//   node --test tests/js/sse.test.mjs
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  Backoff,
  Election,
  Parser,
  SSEClient,
  SSEStream,
  matches,
  streamURL,
} from "../../twisted_sse/static/sse.js";

// ---------------------------------------------------------------- fakes

/** Lets pending microtasks and fake deliveries run. */
async function settle() {
  for (let i = 0; i < 30; i += 1) await new Promise((resolve) => setImmediate(resolve));
}

/** Timers that run only when the test moves the time on. */
class Clock {
  constructor() {
    this.t = 0;
    this.timers = new Map();
    this.seq = 0;
  }

  /** A view of this clock whose timers stop firing once `kill()` is called (a crashed tab). */
  tab() {
    const view = { dead: false };
    view.now = () => this.t;
    view.setTimeout = (f, ms) => this.setTimeout(() => view.dead || f(), ms);
    view.clearTimeout = (id) => this.timers.delete(id);
    view.kill = () => (view.dead = true);
    return view;
  }

  setTimeout(f, ms) {
    this.seq += 1;
    this.timers.set(this.seq, { at: this.t + ms, f, seq: this.seq });
    return this.seq;
  }

  async advance(ms, each = null) {
    const end = this.t + ms;
    for (;;) {
      await settle();
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (!next || timer.at < next[1].at)) next = [id, timer];
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].f();
      each?.();
    }
    this.t = end;
    await settle();
    each?.();
  }
}

/** BroadcastChannel endpoints that deliver to every other open endpoint of a name, later. */
class Bus {
  constructor() {
    this.endpoints = new Set();
    const bus = this;
    this.BroadcastChannel = class {
      constructor(name) {
        this.name = name;
        this.listeners = new Set();
        this.closed = false;
        bus.endpoints.add(this);
      }

      addEventListener(type, listener) {
        this.listeners.add(listener);
      }

      removeEventListener(type, listener) {
        this.listeners.delete(listener);
      }

      postMessage(data) {
        if (this.closed) throw new Error("InvalidStateError");
        for (const other of bus.endpoints) {
          if (other === this || other.name !== this.name) continue;
          const copy = structuredClone(data);
          setImmediate(() => other.closed || other.listeners.forEach((f) => f({ data: copy })));
        }
      }

      close() {
        this.closed = true;
        bus.endpoints.delete(this);
      }
    };
  }
}

/** A LockManager shared by tabs: grants in request order, frees on resolution or on a crash. */
class Locks {
  constructor() {
    this.queues = new Map();
    this.held = new Map();
  }

  tab(tab) {
    return {
      request: (name, options, callback) =>
        new Promise((resolve) => {
          assert.equal(options.mode, "exclusive");
          this._queue(name).push({ tab, callback, resolve });
          this._grant(name);
        }),
    };
  }

  _queue(name) {
    if (!this.queues.has(name)) this.queues.set(name, []);
    return this.queues.get(name);
  }

  _grant(name) {
    if (this.held.has(name)) return;
    const entry = this._queue(name).shift();
    if (!entry) return;
    this.held.set(name, entry);
    queueMicrotask(async () => {
      const result = await entry.callback({ name, mode: "exclusive" });
      this._free(name, entry, result);
    });
  }

  _free(name, entry, result) {
    if (this.held.get(name) !== entry) return;
    this.held.delete(name);
    entry.resolve(result);
    this._grant(name);
  }

  crash(tab) {
    for (const [name, queue] of this.queues) {
      this.queues.set(name, queue.filter((entry) => entry.tab !== tab));
      const holder = this.held.get(name);
      if (holder?.tab === tab) this._free(name, holder, undefined);
    }
  }
}

/** localStorage over a Map. */
class Storage {
  constructor() {
    this.map = new Map();
  }

  getItem(key) {
    return this.map.has(key) ? this.map.get(key) : null;
  }

  setItem(key, value) {
    this.map.set(key, String(value));
  }

  removeItem(key) {
    this.map.delete(key);
  }
}

/** EventSource instances the tests open, answer and break by hand. */
class Sources {
  constructor() {
    this.all = [];
    const sources = this;
    this.EventSource = class {
      constructor(url, init) {
        this.url = new URL(url);
        this.withCredentials = Boolean(init?.withCredentials);
        this.listeners = new Map();
        this.closed = false;
        sources.all.push(this);
      }

      addEventListener(type, listener) {
        if (!this.listeners.has(type)) this.listeners.set(type, new Set());
        this.listeners.get(type).add(listener);
      }

      close() {
        this.closed = true;
      }

      emit(type, data, lastEventId = "") {
        if (this.closed) return;
        for (const listener of this.listeners.get(type) ?? []) listener({ type, data, lastEventId });
      }

      /** An enveloped event of the hub. */
      publish(channel, data, id, event = null) {
        this.emit("message", JSON.stringify({ channel, event, data }), id);
      }

      open() {
        this.onopen?.();
      }

      fail() {
        this.onerror?.();
      }
    };
  }

  get open() {
    return this.all.filter((source) => !source.closed);
  }
}

/** A fetch answering with the responses a test queues; records the requests. */
class Fetches {
  constructor() {
    this.requests = [];
    this.answers = [];
    this.fetch = (url, init) => {
      const request = { url: new URL(url), init, stream: null };
      this.requests.push(request);
      const answer = this.answers.shift() ?? { status: 200 };
      if (answer.error) return Promise.reject(new TypeError("network error"));
      if (answer.status !== 200 || answer.type) {
        const headers = { "content-type": answer.type ?? "application/json" };
        return Promise.resolve(new Response(answer.body ?? null, { status: answer.status, headers }));
      }
      const body = new ReadableStream({
        start(controller) {
          request.stream = controller;
        },
      });
      init.signal?.addEventListener("abort", () => {
        try {
          request.stream.error(new DOMException("aborted", "AbortError"));
        } catch {}
        request.aborted = true;
      });
      request.write = (text) => request.stream.enqueue(new TextEncoder().encode(text));
      request.end = () => request.stream.close();
      const headers = { "content-type": "text/event-stream; charset=utf-8" };
      return Promise.resolve(new Response(body, { status: 200, headers }));
    };
  }
}

/** Every fake a tab needs, shared by the tabs of one "browser". */
class Browser {
  constructor({ locks = true, bus = true, storage = true } = {}) {
    this.clock = new Clock();
    this.locks = locks ? new Locks() : null;
    this.bus = bus ? new Bus() : null;
    this.storage = storage ? new Storage() : null;
    this.sources = new Sources();
    this.fetches = new Fetches();
    this.tabs = [];
  }

  env(name) {
    const clock = this.clock.tab();
    return {
      clock,
      random: () => 0.5,
      locks: this.locks?.tab(name) ?? null,
      BroadcastChannel: this.bus?.BroadcastChannel ?? null,
      storage: this.storage,
      EventSource: this.sources.EventSource,
      fetch: this.fetches.fetch,
    };
  }

  client(options = {}, Kind = SSEClient, url = "http://hub.test/subscribe") {
    const name = `tab${this.tabs.length}`;
    const env = this.env(name);
    const client = new Kind(url, { ...options, env });
    this.tabs.push({ name, env, client });
    return client;
  }

  /** A tab dies: no message, no timer; its locks are freed, its channel endpoint and streams close. */
  crash(client) {
    const tab = this.tabs.find((t) => t.client === client);
    tab.env.clock.kill();
    this.locks?.crash(tab.name);
    for (const endpoint of [...(this.bus?.endpoints ?? [])]) {
      if (client._bc === endpoint) endpoint.close();
    }
    client._conn?.close();
    client.closed = true;
  }

  get leaders() {
    return this.tabs.filter((t) => t.client.leader && !t.client.closed).map((t) => t.client);
  }
}

/** A seeded PRNG (mulberry32), so that a failing split can be replayed. */
function prng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Feeds `chunks` to a new parser; returns its events, retries and final lastEventId. */
function parse(chunks, lastEventId = "") {
  const parser = new Parser(lastEventId);
  const events = [];
  const retries = [];
  parser.onevent = (event) => events.push(event);
  parser.onretry = (ms) => retries.push(ms);
  for (const chunk of [].concat(chunks)) parser.feed(chunk);
  return { events, retries, lastEventId: parser.lastEventId };
}

const message = (data, id = "", type = "message") => ({ type, data, id });

// ---------------------------------------------------------------- Parser

describe("Parser", () => {
  test("one BOM at the very start is removed, a second one is text", () => {
    assert.deepEqual(parse("\uFEFFdata: a\n\n").events, [message("a")]);
    // A BOM that starts the second chunk is not the stream's start: it makes
    // the field name unknown.
    assert.deepEqual(parse(["\uFEFF", "\uFEFFdata: a\n\ndata: b\n\n"]).events, [message("b")]);
    assert.deepEqual(parse(["data: a\n\n", "\uFEFFdata: b\n\n"]).events, [message("a")]);
  });

  test("CR, LF and CRLF each end a line; nothing else does", () => {
    assert.deepEqual(parse("data: a\rdata: b\ndata: c\r\n\r").events, [message("a\nb\nc")]);
    assert.deepEqual(parse("data: a\u2028b\u0085c\x0bd\x0c\n\n").events, [message("a\u2028b\u0085c\x0bd\x0c")]);
  });

  test("a chunk ending in CR dispatches at once, and the LF that follows is not a blank line", () => {
    const parser = new Parser();
    const events = [];
    parser.onevent = (event) => events.push(event);
    parser.feed("data: a\r\n\r");
    assert.deepEqual(events, [message("a")]);
    parser.feed("\ndata: b\r");
    parser.feed("\n");
    assert.equal(events.length, 1, "the LF of a split CRLF must not dispatch");
    parser.feed("\r\n");
    assert.deepEqual(events, [message("a"), message("b")]);
  });

  test("a line without a colon is a field with an empty value", () => {
    assert.deepEqual(parse("data\n\n").events, [message("")]);
    assert.deepEqual(parse("event: x\nevent\ndata\ndata\n\n").events, [message("\n")]);
  });

  test("exactly one space after the colon is removed", () => {
    assert.deepEqual(parse("data:a\n\ndata: a\n\ndata:  a\n\n").events, [message("a"), message("a"), message(" a")]);
  });

  test("unknown fields, names of another case or with spaces, are ignored", () => {
    assert.deepEqual(parse("Data: a\n data: b\ndata : c\nfoo: d\ndata: e\n\n").events, [message("e")]);
  });

  test("comments are ignored", () => {
    assert.deepEqual(parse(": hello\n:\ndata: a\n: between\n\n").events, [message("a")]);
  });

  test("an id containing NUL is ignored; an empty id resets it; the id carries over", () => {
    const { events, lastEventId } = parse("id: 1\ndata: a\n\nid: 2\0\ndata: b\n\ndata: c\n\nid\ndata: d\n\n");
    assert.deepEqual(events, [message("a", "1"), message("b", "1"), message("c", "1"), message("d", "")]);
    assert.equal(lastEventId, "");
  });

  test("the id is committed at a blank line even when no event fires", () => {
    const parser = new Parser("start");
    const ids = [];
    parser.onid = (id) => ids.push(id);
    parser.feed("retry: 10\nid: 7\n\n");
    assert.equal(parser.lastEventId, "7");
    assert.deepEqual(ids, ["7"]);
    assert.deepEqual(parse("data: a\n\n", "start").events, [message("a", "start")]);
  });

  test("retry applies only when it is ASCII digits, at once, leading zeros allowed", () => {
    const { events, retries } = parse("retry: 03000\nretry: 1e3\nretry:\nretry: -1\nretry: 10a\nretry:  5\nretry: ١\n");
    assert.deepEqual(retries, [3000]);
    assert.deepEqual(events, []);
  });

  test("data lines are joined with LF and the last LF is removed", () => {
    assert.deepEqual(parse("data: a\ndata:\ndata: b\n\ndata:\ndata:\n\n").events, [message("a\n\nb"), message("\n")]);
  });

  test("a block without data fires nothing, and resets the type", () => {
    assert.deepEqual(parse("event: x\n\ndata: a\n\nevent: y\nid: 3\n\n").events, [message("a")]);
  });

  test("the type defaults to message and is reset after each dispatch", () => {
    assert.deepEqual(parse("event: tick\ndata: 1\n\ndata: 2\n\n").events, [message("1", "", "tick"), message("2")]);
  });

  test("an unfinished block is not dispatched", () => {
    assert.deepEqual(parse("data: a\n\ndata: b\n").events, [message("a")]);
  });

  test("any split of a stream into chunks parses the same (seeded random splits)", () => {
    const stream =
      "\uFEFFretry: 2500\r\n: comment\r\nid: 1\r\ndata: first\r\ndata:  second\r\n\r\n" +
      "event: tick\rdata: é€𝄞\r\rid: 2\0\ndata\n\nid\nevent: x\nretry: 7\n\r\n" +
      "data: last\r\nid: 9\r\n\r\ndata: unfinished";
    const whole = parse(stream);
    assert.equal(whole.events.length, 4);
    const random = prng(20240607);
    for (let run = 0; run < 500; run += 1) {
      const cuts = new Set();
      const count = Math.floor(random() * 12);
      for (let i = 0; i < count; i += 1) cuts.add(Math.floor(random() * stream.length));
      const points = [0, ...[...cuts].sort((a, b) => a - b), stream.length];
      // A cut inside a surrogate pair cannot come from a TextDecoder.
      const chunks = [];
      for (let i = 1; i < points.length; i += 1) chunks.push(stream.slice(points[i - 1], points[i]));
      const safe = chunks.every((c) => !/^[\uDC00-\uDFFF]/.test(c));
      if (!safe) continue;
      assert.deepEqual(parse(chunks), whole, `split at ${points.join(",")}`);
    }
    // Every single-character split, CR|LF included.
    for (let i = 0; i <= stream.length; i += 1) {
      if (/[\uDC00-\uDFFF]/.test(stream[i] ?? "")) continue;
      assert.deepEqual(parse([stream.slice(0, i), stream.slice(i)]), whole, `split at ${i}`);
    }
    assert.deepEqual(parse([...stream.replace(/\uD834\uDD1E/, "x")]).events.length, 4);
  });
});

// ------------------------------------------------- Backoff, URLs, patterns

describe("Backoff", () => {
  test("full jitter: each delay lies in [0, min(max, base * 2^n)), and reset starts again", () => {
    const top = new Backoff(10000, () => 0.999999);
    assert.deepEqual([1, 2, 3, 4, 5, 6].map(() => top.next()), [999, 1999, 3999, 7999, 9999, 9999]);
    top.reset();
    assert.equal(top.next(), 999);
    const bottom = new Backoff(10000, () => 0);
    assert.equal(bottom.next(), 0);
    const random = prng(7);
    const backoff = new Backoff(30000, random);
    for (let n = 0; n < 40; n += 1) {
      const delay = backoff.next();
      assert.ok(delay >= 0 && delay < Math.min(30000, 1000 * 2 ** n), `${delay} at ${n}`);
    }
  });

  test("the base is the server's retry, but never under 100 ms", () => {
    const backoff = new Backoff(30000, () => 0.5);
    backoff.base = 4000;
    assert.equal(backoff.next(), 2000);
    backoff.reset();
    backoff.base = 0;
    assert.equal(backoff.next(), 50);
  });
});

describe("streamURL and matches", () => {
  test("channels are sorted and deduplicated, with envelope=1 and the cursor", () => {
    const url = new URL(streamURL("http://h.test/subscribe", { channels: ["b", "a.*", "b"], lastEventId: "~x/y" }));
    assert.deepEqual(url.searchParams.getAll("channel"), ["a.*", "b"]);
    assert.equal(url.searchParams.get("envelope"), "1");
    assert.equal(url.searchParams.get("lastEventId"), "~x/y");
  });

  test("the URL's own query is kept, a stale lastEventId replaced, none added when empty", () => {
    const base = "http://h.test/subscribe?access_token=t&lastEventId=old";
    const url = new URL(streamURL(base, { channels: ["a"], lastEventId: "new" }));
    assert.equal(url.searchParams.get("access_token"), "t");
    assert.deepEqual(url.searchParams.getAll("lastEventId"), ["new"]);
    const plain = new URL(streamURL(base));
    assert.equal(plain.searchParams.get("lastEventId"), null);
    assert.equal(plain.searchParams.get("envelope"), null);
    assert.deepEqual(plain.searchParams.getAll("channel"), []);
  });

  test("a pattern covers every channel under its prefix, at any depth, and nothing else", () => {
    assert.ok(matches("news.*", "news.eu"));
    assert.ok(matches("news.*", "news.eu.fr"));
    assert.ok(!matches("news.*", "news"));
    assert.ok(!matches("news.*", "newsroom"));
    assert.ok(matches("a", "a"));
    assert.ok(!matches("a", "ab"));
  });
});

// ---------------------------------------------------------------- Election

describe("Election", () => {
  function elect(browser, count) {
    return Array.from({ length: count }, (_, i) => {
      const name = `tab${i}`;
      const clock = browser.clock.tab();
      const channel = browser.bus ? new browser.bus.BroadcastChannel("e") : null;
      const election = new Election({
        name: "e",
        locks: browser.locks?.tab(name) ?? null,
        channel,
        storage: browser.storage,
        clock,
        id: name,
      });
      return Object.assign(election, { tab: name, clock });
    });
  }

  const leaders = (elections) => elections.filter((e) => e.leader && !e.closed);

  test("with Web Locks, one leader among five; its close hands over to exactly one", async () => {
    const browser = new Browser();
    const elections = elect(browser, 5);
    await settle();
    assert.deepEqual(leaders(elections), [elections[0]]);
    elections[0].close();
    await settle();
    assert.deepEqual(leaders(elections), [elections[1]]);
  });

  test("with Web Locks, a crashed leader's lock goes to one follower", async () => {
    const browser = new Browser();
    const elections = elect(browser, 3);
    await settle();
    browser.locks.crash("tab0");
    elections[0].closed = true;
    await settle();
    assert.deepEqual(leaders(elections), [elections[1]]);
  });

  test("without channel, or without both locks and storage, every tab leads alone", () => {
    const browser = new Browser({ bus: false });
    assert.ok(elect(browser, 2).every((e) => e.leader));
    const bare = new Browser({ locks: false, storage: false });
    assert.ok(elect(bare, 2).every((e) => e.leader));
  });

  test("with the localStorage lease, one leader at every moment once elected", async () => {
    const browser = new Browser({ locks: false });
    const elections = elect(browser, 4);
    let elected = false;
    await browser.clock.advance(10000, () => {
      const count = leaders(elections).length;
      assert.ok(count <= 1, `${count} leaders at ${browser.clock.t} ms`);
      elected ||= count === 1;
    });
    assert.ok(elected);
    assert.equal(leaders(elections).length, 1);
  });

  test("the lease of a crashed leader is taken after 2 s of silence, by one tab", async () => {
    const browser = new Browser({ locks: false });
    const elections = elect(browser, 3);
    await browser.clock.advance(1000);
    const [old] = leaders(elections);
    old.clock.kill(); // no renewal, no close
    const crashedAt = browser.clock.t;
    const lastRenewal = JSON.parse(browser.storage.getItem("e")).t;
    await browser.clock.advance(5000, () => {
      const others = leaders(elections).filter((e) => e !== old);
      if (browser.clock.t - lastRenewal <= 2000) assert.equal(others.length, 0, `taken at ${browser.clock.t}`);
      assert.ok(others.length <= 1);
    });
    const others = leaders(elections).filter((e) => e !== old);
    assert.equal(others.length, 1);
    assert.ok(crashedAt > 0);
  });

  test("a leader that closes frees the lease at once", async () => {
    const browser = new Browser({ locks: false });
    const elections = elect(browser, 2);
    await browser.clock.advance(1000);
    const [old] = leaders(elections);
    old.close();
    assert.equal(browser.storage.getItem("e"), null);
    await browser.clock.advance(1000);
    assert.equal(leaders(elections).length, 1);
    assert.notEqual(leaders(elections)[0], old);
  });
});

// ------------------------------------------------------- SSEClient, one tab

describe("SSEClient", () => {
  test("subscriptions of one task open one stream of their channels, enveloped, and route events", async () => {
    const browser = new Browser();
    const client = browser.client();
    const seen = [];
    client.subscribe("news.*", (e) => seen.push(["news", e]));
    client.subscribe(["b", "a"], (e) => seen.push(["ab", e]));
    await settle();
    assert.ok(client.leader);
    assert.equal(browser.sources.all.length, 1);
    const [source] = browser.sources.all;
    assert.deepEqual(source.url.searchParams.getAll("channel"), ["a", "b", "news.*"]);
    assert.equal(source.url.searchParams.get("envelope"), "1");
    source.open();
    assert.equal(client.state, "open");
    source.publish("news.eu", "hello", "~1", "headline");
    source.publish("a", "x", "~2");
    source.publish("other", "y", "~3");
    assert.deepEqual(seen, [
      ["news", { channel: "news.eu", type: "headline", data: "hello", id: "~1" }],
      ["ab", { channel: "a", type: "message", data: "x", id: "~2" }],
    ]);
    assert.equal(client.cursor, "~3");
    client.close();
  });

  test("closing subscriptions reconnects once, with the cursor; no channel means no stream", async () => {
    const browser = new Browser();
    const client = browser.client();
    const one = client.subscribe("a", () => {});
    const two = client.subscribe("b", () => {});
    await settle();
    browser.sources.all[0].open();
    browser.sources.all[0].publish("a", "x", "~9");
    one.close();
    client.subscribe("c", () => {});
    client.subscribe("d", () => {});
    await settle();
    assert.equal(browser.sources.all.length, 2);
    assert.ok(browser.sources.all[0].closed);
    const second = browser.sources.all[1].url.searchParams;
    assert.deepEqual(second.getAll("channel"), ["b", "c", "d"]);
    assert.equal(second.get("lastEventId"), "~9");
    const bare = browser.client({ share: false });
    bare.subscribe("z", () => {}).close();
    await settle();
    assert.equal(browser.sources.all.length, 2);
    two.close();
    client.close();
    bare.close();
  });

  test("the cursor event gives the cursor before any event, and reaches no handler", async () => {
    const browser = new Browser();
    const client = browser.client();
    const got = [];
    client.subscribe("a", (event) => got.push(event));
    await settle();
    const first = browser.sources.all[0];
    first.open();
    first.emit("cursor", "{}", "~5");
    assert.equal(client.cursor, "~5");
    assert.deepEqual(got, []);
    // Cut before any event: the next stream resumes from that cursor.
    first.fail();
    await browser.clock.advance(60000);
    const second = browser.sources.all.at(-1);
    assert.notEqual(second, first);
    assert.equal(second.url.searchParams.get("lastEventId"), "~5");
    client.close();
  });

  test("history-lost goes to onhistorylost once; a throwing handler stops nothing", async () => {
    const browser = new Browser();
    const lost = [];
    const client = browser.client({ onhistorylost: (info) => lost.push(info) });
    const seen = [];
    const errors = [];
    const original = console.error;
    console.error = (error) => errors.push(error);
    try {
      client.subscribe("a", () => {
        throw new Error("handler");
      });
      client.subscribe("a", (e) => seen.push(e.data));
      await settle();
      const [source] = browser.sources.all;
      source.open();
      const info = { reason: "trimmed", channels: { a: "trimmed" } };
      source.emit("history-lost", JSON.stringify(info), "~1");
      source.publish("a", "after", "~2");
      assert.deepEqual(lost, [info]);
      assert.deepEqual(seen, ["after"]);
      assert.equal(errors.length, 1);
    } finally {
      console.error = original;
      client.close();
    }
  });

  test("a stream that drops is retried after a jittered back-off, reset by the next open", async () => {
    const browser = new Browser();
    const client = browser.client({ maxRetry: 4000 });
    client.subscribe("a", () => {});
    await settle();
    const states = [];
    client._o.onstatechange = (state) => states.push(state);
    browser.sources.all[0].open();
    browser.sources.all[0].fail(); // after open: no probe, a retry
    assert.equal(client.state, "connecting");
    await browser.clock.advance(499); // random() is 0.5: 0.5 * 1000
    assert.equal(browser.sources.all.length, 1);
    await browser.clock.advance(1);
    assert.equal(browser.sources.all.length, 2);
    assert.deepEqual(states, ["open", "connecting"]);
    browser.sources.all[1].open();
    browser.sources.all[1].fail();
    await browser.clock.advance(500);
    assert.equal(browser.sources.all.length, 3, "the open reset the back-off");
    client.close();
  });

  test("an EventSource refused before opening is asked why; 401 goes to onauth, which may retry or stop", async () => {
    const browser = new Browser();
    const calls = [];
    let again = true;
    const client = browser.client({
      withCredentials: true,
      onauth: async (status, body) => {
        calls.push([status, body]);
        return again;
      },
    });
    client.subscribe("a", () => {});
    await settle();
    assert.ok(browser.sources.all[0].withCredentials);
    browser.fetches.answers.push({ status: 401, body: '{"error": "invalid_token"}' });
    browser.sources.all[0].fail();
    await settle();
    assert.deepEqual(calls, [[401, { error: "invalid_token" }]]);
    assert.equal(browser.fetches.requests[0].init.credentials, "include");
    assert.equal(browser.sources.all.length, 2, "onauth said yes: at once");
    again = false;
    browser.fetches.answers.push({ status: 403, body: "not json" });
    browser.sources.all[1].fail();
    await settle();
    assert.deepEqual(calls[1], [403, null]);
    assert.equal(client.state, "closed");
    await browser.clock.advance(60000);
    assert.equal(browser.sources.all.length, 2);
    client.close();
  });

  test("an EventSource failing on a 5xx backs off; on a 204 it stops", async () => {
    const browser = new Browser();
    const client = browser.client();
    client.subscribe("a", () => {});
    await settle();
    browser.fetches.answers.push({ status: 502 });
    browser.sources.all[0].fail();
    await browser.clock.advance(500);
    assert.equal(browser.sources.all.length, 2);
    browser.fetches.answers.push({ status: 204 });
    browser.sources.all[1].fail();
    await browser.clock.advance(60000);
    assert.equal(browser.sources.all.length, 2);
    assert.equal(client.state, "closed");
    client.close();
  });
});

// ------------------------------------------------------ the fetch transport

describe("fetch transport", () => {
  test("sends the headers, parses the body, takes the cursor of the first frame and the server's retry", async () => {
    const browser = new Browser();
    let calls = 0;
    const client = browser.client({
      transport: "fetch",
      headers: async () => ({ Authorization: `Bearer t${(calls += 1)}` }),
    });
    const seen = [];
    client.subscribe("a", (e) => seen.push(e));
    await settle();
    const [request] = browser.fetches.requests;
    assert.equal(request.init.headers.Authorization, "Bearer t1");
    assert.equal(request.init.headers.Accept, "text/event-stream");
    assert.equal(request.url.searchParams.get("envelope"), "1");
    request.write("\uFEFFretry: 4000\nid: ~0\n\n");
    await settle();
    assert.equal(client.state, "open");
    assert.equal(client.cursor, "~0");
    request.write('id: ~1\ndata: {"channel": "a", "event": null, "data": "x"}\r\r');
    await settle();
    assert.deepEqual(seen, [{ channel: "a", type: "message", data: "x", id: "~1" }]);
    request.end();
    await browser.clock.advance(1999); // 0.5 * 4000
    assert.equal(browser.fetches.requests.length, 1);
    await browser.clock.advance(1);
    const second = browser.fetches.requests[1];
    assert.equal(second.init.headers.Authorization, "Bearer t2");
    assert.equal(second.url.searchParams.get("lastEventId"), "~1");
    client.close();
    await settle();
    assert.ok(second.aborted);
  });

  test("onauth returning headers retries with them; a wrong type stops; a network error retries", async () => {
    const browser = new Browser();
    const client = browser.client({
      transport: "fetch",
      headers: { Authorization: "Bearer old" },
      onauth: async () => ({ Authorization: "Bearer new" }),
    });
    client.subscribe("a", () => {});
    browser.fetches.answers.push({ status: 401, body: "{}" }, { error: true });
    await settle();
    assert.equal(browser.fetches.requests[1].init.headers.Authorization, "Bearer new");
    browser.fetches.answers.push({ status: 200, type: "text/html" });
    await browser.clock.advance(500);
    assert.equal(browser.fetches.requests.length, 3);
    assert.equal(client.state, "closed");
    client.close();
  });
});

// ------------------------------------------------------ sharing between tabs

describe("sharing", () => {
  async function three(options = {}) {
    const browser = new Browser(options);
    const seen = [[], [], []];
    const clients = [0, 1, 2].map((i) => browser.client());
    clients[0].subscribe("a", (e) => seen[0].push(e.data));
    clients[1].subscribe("b", (e) => seen[1].push(e.data));
    clients[2].subscribe(["b", "c.*"], (e) => seen[2].push(e.data));
    await browser.clock.advance(1000);
    return { browser, clients, seen };
  }

  test("one stream for three tabs, of the union of their channels, relayed to each", async () => {
    const { browser, clients, seen } = await three();
    assert.deepEqual(browser.leaders, [clients[0]]);
    assert.equal(browser.sources.open.length, 1);
    const source = browser.sources.open[0];
    assert.deepEqual(source.url.searchParams.getAll("channel"), ["a", "b", "c.*"]);
    source.open();
    source.publish("a", "1", "~1");
    source.publish("b", "2", "~2");
    source.publish("c.x", "3", "~3");
    await settle();
    assert.deepEqual(seen, [["1"], ["2"], ["2", "3"]]);
    assert.deepEqual(clients.map((c) => [c.state, c.cursor]), Array(3).fill(["open", "~3"]));
    assert.ok(!clients[1].leader && !clients[2].leader);
    clients.forEach((c) => c.close());
  });

  test("the leader's close hands the stream to one tab, resuming from the cursor without loss or repeat", async () => {
    const { browser, clients, seen } = await three();
    const first = browser.sources.open[0];
    first.open();
    first.publish("b", "1", "~1");
    await settle();
    clients[0].close();
    await settle();
    assert.deepEqual(browser.leaders, [clients[1]]);
    assert.equal(browser.sources.open.length, 1);
    const second = browser.sources.open[0];
    assert.equal(second.url.searchParams.get("lastEventId"), "~1");
    assert.deepEqual(second.url.searchParams.getAll("channel"), ["a", "b", "c.*"]);
    second.open();
    second.publish("b", "1", "~1"); // the replay repeats the last one
    second.publish("b", "2", "~2");
    await settle();
    assert.deepEqual(seen.slice(1), [["1", "2"], ["1", "2"]]);
    // The closed tab's channel is dropped once the old leader's set is forgotten.
    await browser.clock.advance(4000);
    assert.deepEqual(browser.sources.open[0].url.searchParams.getAll("channel"), ["b", "c.*"]);
    assert.equal(browser.sources.open[0].url.searchParams.get("lastEventId"), "~2");
    clients.forEach((c) => c.close());
  });

  test("a crashed leader is replaced, with the cursor it relayed last", async () => {
    const { browser, clients, seen } = await three();
    const first = browser.sources.open[0];
    first.open();
    first.publish("c.y", "1", "~1");
    await settle();
    browser.crash(clients[0]);
    first.close();
    await settle();
    assert.deepEqual(browser.leaders, [clients[1]]);
    const second = browser.sources.open[0];
    assert.equal(second.url.searchParams.get("lastEventId"), "~1");
    second.open();
    second.publish("c.y", "2", "~2");
    await settle();
    assert.deepEqual(seen[2], ["1", "2"]);
    clients.slice(1).forEach((c) => c.close());
  });

  test("a follower silent for 3 s is forgotten and its channels dropped, with one reconnect", async () => {
    const { browser, clients } = await three();
    browser.sources.open[0].open();
    await browser.clock.advance(4000); // the old leader's set is gone
    const before = browser.sources.all.length;
    browser.crash(clients[2]);
    await browser.clock.advance(2900);
    assert.equal(browser.sources.all.length, before);
    await browser.clock.advance(1200);
    assert.equal(browser.sources.all.length, before + 1);
    assert.deepEqual(browser.sources.open[0].url.searchParams.getAll("channel"), ["a", "b"]);
    clients.slice(0, 2).forEach((c) => c.close());
  });

  test("a follower's new subscription reconnects the leader once, with the cursor", async () => {
    const { browser, clients } = await three();
    const first = browser.sources.open[0];
    first.open();
    first.publish("a", "x", "~5");
    const before = browser.sources.all.length;
    clients[1].subscribe("d", () => {});
    clients[1].subscribe("e", () => {});
    await settle();
    assert.equal(browser.sources.all.length, before + 1);
    const url = browser.sources.open[0].url.searchParams;
    assert.deepEqual(url.getAll("channel"), ["a", "b", "c.*", "d", "e"]);
    assert.equal(url.get("lastEventId"), "~5");
    clients.forEach((c) => c.close());
  });

  test("with the localStorage fallback the tabs still share one stream", async () => {
    const { browser, clients, seen } = await three({ locks: false });
    assert.equal(browser.leaders.length, 1);
    assert.equal(browser.sources.open.length, 1);
    const source = browser.sources.open[0];
    source.open();
    source.publish("b", "1", "~1");
    await settle();
    assert.deepEqual(seen, [[], ["1"], ["1"]]);
    clients.forEach((c) => c.close());
  });

  test("without BroadcastChannel each tab has its own stream", async () => {
    const { browser, clients } = await three({ bus: false });
    assert.equal(browser.sources.open.length, 3);
    assert.ok(clients.every((c) => c.leader));
    clients.forEach((c) => c.close());
  });
});

// ---------------------------------------------------------------- SSEStream

describe("SSEStream", () => {
  test("a plain stream is shared, and typed listeners are added for every tab's types", async () => {
    const browser = new Browser();
    const one = browser.client({}, SSEStream, "http://hub.test/events");
    const two = browser.client({}, SSEStream, "http://hub.test/events");
    const seen = [];
    one.on("message", (e) => seen.push(["one", e]));
    const off = two.on("tick", (e) => seen.push(["two", e]));
    await browser.clock.advance(1000);
    assert.equal(browser.sources.all.length, 1);
    const [source] = browser.sources.all;
    assert.equal(source.url.search, "");
    assert.ok(source.listeners.has("tick"));
    source.open();
    source.emit("message", "1");
    source.emit("tick", "t");
    await settle();
    assert.deepEqual(seen, [
      ["one", { type: "message", data: "1", id: "" }],
      ["two", { type: "tick", data: "t", id: "" }],
    ]);
    off();
    source.emit("tick", "u");
    await settle();
    assert.equal(seen.length, 2);
    assert.equal(browser.sources.all.length, 1, "types never reconnect");
    one.close();
    two.close();
  });
});
