// Typings of Herald's client, served at /client.d.ts next to /client.js.

/** The client's version (the npm package @herald/client has the same). */
export const VERSION: string;

export type Transport = 'websocket' | 'sse' | 'poll';

export type State = 'connecting' | 'open' | 'reconnecting' | 'offline' | 'closed';

/**
 * Why the state changed (the second argument of a `state` listener):
 * `connect` (a transport opened), `closed:<code>` (a WebSocket close code,
 * such as `closed:1012`), `network`, `timeout`, `token`, `forbidden`,
 * `drain`, `missed`, `http:<status>`, `offline`, `leader` (this tab took over a shared connection),
 * `close()`, `logged_out`, `unsupported_protocol`, or a server code.
 */
export type StateReason =
  | 'connect'
  | `closed:${number}`
  | 'network'
  | 'timeout'
  | 'token'
  | 'forbidden'
  | 'drain'
  | 'missed'
  | `http:${number}`
  | 'offline'
  | 'leader'
  | 'close()'
  | 'logged_out'
  | 'unsupported_protocol'
  | (string & {});

/** What a `state` listener gets besides the new state. */
export interface StateChange {
  /** The state before. */
  previous: State;
  reason: StateReason;
  /** When a retry is scheduled: in how many ms. */
  retryIn?: number;
}

/** A frame as the `frame` event reports it. */
export interface FrameInfo {
  direction: 'in' | 'out';
  transport: Transport;
  /**
   * WebSocket: the frame (parsed JSON, or the text when it is not JSON;
   * outgoing `auth` frames carry the token). SSE: `{event, id, data}` with
   * the message's text, and the request line going out. Polling: the
   * parsed answer, and the request line going out.
   */
  data: unknown;
}

/**
 * Every `code` a HeraldError can have: the server's (problem documents,
 * WebSocket `error` frames, SSE `event: error`) and the client's own.
 */
export type HeraldErrorCode =
  // The server's.
  | 'unauthorized'
  | 'token_expired'
  | 'revoked'
  | 'forbidden'
  | 'origin_not_allowed'
  | 'invalid_topic'
  | 'invalid_cursor'
  | 'invalid_parameter'
  | 'invalid_frame'
  | 'unknown_op'
  | 'too_many_topics'
  | 'rate_limited'
  | 'slow_consumer'
  | 'unavailable'
  | 'draining'
  | 'not_found'
  | 'unsupported_protocol'
  | 'invalid_device'
  | 'too_many_devices'
  // An HTTP answer without a problem document (a proxy's).
  | `http_${number}`
  // The client's.
  | 'token'
  | 'logged_out'
  | 'handler'
  | 'bad_frame'
  | 'bad_response'
  | 'protocol'
  | 'network'
  | 'unsubscribed'
  | 'closed'
  | 'push_unsupported';

/** Where lifecycle lines go (`console` fits). */
export interface HeraldLogger {
  debug(...args: unknown[]): void;
  info(...args: unknown[]): void;
  warn(...args: unknown[]): void;
  error(...args: unknown[]): void;
}

/** An event as every transport delivers it. */
export interface HeraldEvent<T = unknown> {
  topic: string;
  /** Per topic, gapless, from 1. */
  seq: number;
  /** The publisher's idempotency key, or a server-made id. */
  id: string;
  type?: string;
  /** RFC 3339 commit time, UTC, milliseconds. */
  time: string;
  data: T;
}

/** Events before seq `from` of `topic` are no longer retained. */
export interface ResetInfo {
  topic: string;
  from: number;
}

/** Anything `sessionStorage`-like. */
export interface CursorStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface HeraldOptions {
  /** A bearer token (JWT). Without `token` and `getToken`, the session cookie authenticates. */
  token?: string;
  /**
   * Returns a fresh token; called before expiry and after the server refuses one; one call at a time.
   * `null` means logged out: the client closes (state `closed`, reason `logged_out`) and asks no more.
   */
  getToken?: () => string | null | Promise<string | null>;
  /** Transports in order of preference. Default `['websocket', 'sse', 'poll']`. */
  transports?: Transport[];
  /** How long a transport may take to show that it works, in ms, before the next one is tried. Default 5000. */
  openTimeout?: number;
  /** First reconnect delay bound, in ms (full jitter). Default 500. */
  minDelay?: number;
  /** Largest reconnect delay, in ms. Default 20000. */
  maxDelay?: number;
  /** A connection open this long (ms) resets the backoff. Default 10000. */
  stableAfter?: number;
  /** The server's heartbeat interval, in ms (liveness deadlines derive from it). Default 25000. */
  heartbeat?: number;
  /** How long a WebSocket ping may stay unanswered, in ms. Default 10000. */
  pongTimeout?: number;
  /** Long-poll `wait`, in seconds. Default 25. */
  pollWait?: number;
  /** Long-poll `limit`. Default 100. */
  pollLimit?: number;
  /** Stop long polling while the tab is hidden. Default true. */
  pauseWhenHidden?: boolean;
  /** Share one connection among the tabs of the origin with the same user (token `sub`), or the group this string names. Default true. */
  share?: boolean | string;
  /** After a fallback from WebSocket, try it again in the background after this many ms (doubling after each failure). Default 30000. */
  upgradeAfter?: number;
  /** Keep each topic's position so that a reload resumes. Default false. */
  persist?: false | 'session' | 'local' | CursorStorage;
  /**
   * Acknowledge processed events to the server (per token `sub`): `'auto'`
   * once the handlers of an event return, `'manual'` with `ack(event)`.
   * Either way, topics without a position resume after the acknowledged seq.
   */
  ack?: 'auto' | 'manual';
  /** Log connection lifecycle lines (transport tried, opened, closed, retries, token refreshes, fallbacks) with a `[herald]` prefix. Default: true when `logger` is given. */
  debug?: boolean;
  /** Where the client logs (lifecycle lines to `debug`, unhandled errors to `warn`) instead of `console`. */
  logger?: HeraldLogger;
  /** Implementations to use instead of the global ones (React Native, Node, tests); `null` disables one. */
  WebSocket?: unknown;
  EventSource?: unknown;
  fetch?: typeof fetch;
}

export interface SubscribeOptions {
  /** The seq already seen (0: everything retained), or a cursor text (`topic:seq,...`). */
  since?: number | string;
  /** Called when events of this subscription were lost (no longer retained). */
  onReset?: (reset: ResetInfo) => void;
  /** Called when the server stops this subscription (forbidden topic). */
  onError?: (error: HeraldError) => void;
}

export class HeraldError extends Error {
  constructor(code: HeraldErrorCode | (string & {}), message: string, extra?: { status?: number; topics?: string[]; cause?: unknown; retryAfter?: number });
  /** The server's problem `code`, or the client's: see HeraldErrorCode. */
  code: HeraldErrorCode | (string & {});
  /** The HTTP status, for an HTTP answer. */
  status?: number;
  /** The topics it concerns. */
  topics?: string[];
  /** Seconds, from a `Retry-After`. */
  retryAfter?: number;
}

export class Subscription {
  readonly topic: string;
  /** The seq of the last event delivered to this subscription; for a live one, the topic's position once the server told it. */
  readonly seq: number | undefined;
  /** False once unsubscribed or stopped by the server. */
  readonly active: boolean;
  /**
   * Resolves once the server confirmed the subscription (live: every event
   * committed since is delivered); rejects with a HeraldError when the topic
   * is refused (`forbidden`, `invalid_topic`, `too_many_topics`) or the
   * subscription ends before (`unsubscribed`, `closed`, `logged_out`,
   * `unsupported_protocol`). Ignoring it is safe (no unhandled rejection).
   */
  readonly ready: Promise<void>;
  unsubscribe(): void;
}

export interface HeraldEventMap {
  state: State;
  reset: ResetInfo;
  error: HeraldError;
  frame: FrameInfo;
}

export class Herald {
  constructor(url: string, options?: HeraldOptions);
  /** The base URL. */
  readonly url: string;
  readonly state: State;
  /** The transport in use; undefined while none is (or in a tab that follows another). */
  readonly transport: Transport | undefined;
  subscribe<T = unknown>(topic: string, handler: (event: HeraldEvent<T>) => void, options?: SubscribeOptions): Subscription;
  /** Returns a function that removes the listener. A `state` listener also gets the change's context. */
  on(name: 'state', listener: (state: State, change: StateChange) => void): () => void;
  on<K extends keyof HeraldEventMap>(name: K, listener: (value: HeraldEventMap[K]) => void): () => void;
  close(): void;
  /** Acknowledges `event` and everything before it on its topic. */
  ack(event: { topic: string; seq: number }): void;
  /**
   * Registers this browser for Web Push to offline devices: subscribes
   * `registration.pushManager` with the server's VAPID key and posts the
   * subscription to `/v1/devices` for `topics` (within the token's
   * subscribe grants; `{sub}` allowed). Rejects with a HeraldError
   * (`push_unsupported`, `not_found` when the server has no Web Push,
   * `forbidden`, `invalid_topic`, `too_many_devices`, ...).
   */
  registerPush(registration: ServiceWorkerRegistration, options: { topics: string[] }): Promise<PushDevice>;
}

/** A device registered for push (`POST /v1/devices`). */
export interface PushDevice {
  id: string;
  platform: 'webpush' | 'fcm' | 'apns';
  topics: string[];
  created_at: string;
}

export default Herald;
