// Types of sse.js, twisted_sse's browser client.

/** The state of a client's (shared) stream. */
export type SSEState = "connecting" | "open" | "closed";

/** An event of a plain stream: its type ("message" by default), data and id. */
export interface StreamEvent {
  type: string;
  data: string;
  /** The last event id (for a hub: the cursor) after this event. */
  id: string;
}

/** An event of a hub channel. */
export interface ChannelEvent extends StreamEvent {
  /** The channel it was published on. */
  channel: string;
}

/** The data of a history-lost event: the first reason, and each channel's. */
export interface HistoryLost {
  reason: string;
  channels?: Record<string, string>;
}

export type Headers = Record<string, string>;

/** What a tab needs from its browser; tests replace any of it. */
export interface Environment {
  clock: Clock;
  random: () => number;
  locks: LockManagerLike | null | undefined;
  storage: StorageLike | null | undefined;
  BroadcastChannel: (new (name: string) => BroadcastChannelLike) | null | undefined;
  EventSource: new (url: string, init?: { withCredentials?: boolean }) => EventSource;
  fetch: typeof fetch;
}

export interface Clock {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The part of `navigator.locks` that is used. */
export interface LockManagerLike {
  request(name: string, options: { mode: "exclusive" }, callback: (lock: unknown) => unknown): Promise<unknown>;
}

/** The part of `localStorage` that is used. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** The part of `BroadcastChannel` that is used. */
export interface BroadcastChannelLike {
  postMessage(message: unknown): void;
  addEventListener(type: "message", listener: (event: { data: unknown }) => void): void;
  close(): void;
}

export interface StreamOptions {
  /** "eventsource" (the default), or "fetch", which can send headers. */
  transport?: "eventsource" | "fetch";
  /** Cookies to another origin (EventSource withCredentials, fetch credentials "include"). */
  withCredentials?: boolean;
  /** Request headers, fetch transport only: an object, or a function (maybe async) giving one. */
  headers?: Headers | (() => Headers | Promise<Headers>);
  /** One connection for all tabs of this origin with the same key (default true). */
  share?: boolean;
  /** What names the shared connection; by default the resolved URL and the transport. */
  key?: string;
  /**
   * Called on a 401 or 403 with the JSON body (or null).  Truthy: try again
   * (an object: the headers to send from now on); falsy: stop ("closed").
   */
  onauth?: (status: 401 | 403, body: unknown) => unknown;
  onstatechange?: (state: SSEState) => void;
  /** The cap of the back-off in ms (default 30000); it starts at the server's retry:. */
  maxRetry?: number;
  /** For tests: replaces the browser's globals. */
  env?: Partial<Environment>;
}

export interface ClientOptions extends StreamOptions {
  /** Called once per history-lost event, in every tab. */
  onhistorylost?: (info: HistoryLost) => void;
}

/** A subscription's handle. */
export interface Subscription {
  /** Drops its channels (one reconnection for all changes of a task). */
  close(): void;
}

declare class Shared {
  /** The absolute URL. */
  readonly url: string;
  /** The last id (cursor) received. */
  readonly cursor: string;
  /** "connecting" also while there is nothing to follow. */
  readonly state: SSEState;
  /** Whether this tab holds the connection. */
  readonly leader: boolean;
  readonly closed: boolean;
  /** Releases everything: connection, lock, BroadcastChannel, timers.  Final. */
  close(): void;
}

/** Channels of a twisted_sse hub (its /subscribe URL), routed to handlers. */
export class SSEClient extends Shared {
  constructor(url: string | URL, options?: ClientOptions);
  /** Names are channels or `prefix.*` patterns; no channel at all, no connection. */
  subscribe(names: string | string[], handler: (event: ChannelEvent) => void): Subscription;
}

/** A plain event stream (no channels), shared across tabs like SSEClient. */
export class SSEStream extends Shared {
  constructor(url: string | URL, options?: StreamOptions);
  /** Returns the function that removes the handler. */
  on(type: string, handler: (event: StreamEvent) => void): () => void;
}

/** The WHATWG event-stream parsing rules, fed with decoded text. */
export class Parser {
  constructor(lastEventId?: string);
  /** The committed last event id. */
  lastEventId: string;
  onevent?: ((event: StreamEvent) => void) | null;
  onretry?: ((ms: number) => void) | null;
  /** At every blank line, with the committed id, even when no event fires. */
  onid?: ((id: string) => void) | null;
  feed(chunk: string): void;
}

/** Leader election among tabs (Web Locks; else a localStorage lease; else alone). */
export class Election {
  constructor(options: {
    name: string;
    locks?: LockManagerLike | null;
    channel?: BroadcastChannelLike | null;
    storage?: StorageLike | null;
    clock?: Clock;
    id?: string;
    onchange?: (leader: boolean) => void;
  });
  readonly name: string;
  readonly id: string;
  readonly leader: boolean;
  readonly closed: boolean;
  onchange?: (leader: boolean) => void;
  close(): void;
}

/** Full-jitter back-off: a delay in [0, min(max, max(base, 100) * 2^attempt)). */
export class Backoff {
  constructor(max?: number, random?: () => number);
  max: number;
  base: number;
  attempt: number;
  next(): number;
  reset(): void;
}

/** Whether a channel name or a `prefix.*` pattern covers `channel`. */
export function matches(pattern: string, channel: string): boolean;

/** `url` (its query kept) with the channels, sorted, once each, envelope=1, and the cursor. */
export function streamURL(url: string | URL, options?: { channels?: string[] | null; lastEventId?: string }): string;
