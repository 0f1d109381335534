/**
 * Herald client (browser, React Native, Node): WebSocket, SSE or long
 * polling, resuming after any disconnect with nothing lost or repeated.
 * Served at `/client.js`, typings at `/client.d.ts`; see docs/API.md.
 * @module herald
 */

/** @typedef {import('./client').Transport} Transport */
/** @typedef {import('./client').State} State */
/** @typedef {import('./client').HeraldEvent} HeraldEvent */

const g = globalThis;
const ALL = ['websocket', 'sse', 'poll'];
const TOPIC = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;
const AUTH_CODES = ['unauthorized', 'token_expired', 'revoked'];
/** What follower tabs post. */
const FOLLOWER = ['sub', 'unsub', 'bye', 'ping'];
const now = () => Date.now();
const rand = (ms) => Math.random() * ms;
/** Longer delays overflow setTimeout, which then fires at once. */
const MAX_MS = 2 ** 31 - 1;
/** setTimeout for computed delays. */
const after = (fn, ms) => setTimeout(fn, Math.min(MAX_MS, Math.max(0, ms) || 0));
/** Transports that worked, per origin, for this page's life. */
const worked = new Map();
export const VERSION = '0.1.0';
/** The version of the subscribing protocol this client speaks (`?protocol=`). */
const PROTOCOL = 1;

/** An error the client reports through its `error` event. */
export class HeraldError extends Error {
  /**
   * @param {string} code the server's problem `code`, or the client's (client.d.ts)
   * @param {string} message
   * @param {object} [extra] `status`, `topics`, `cause`, `retryAfter`
   */
  constructor(code, message, extra) {
    super(message);
    this.name = 'HeraldError';
    this.code = code;
    Object.assign(this, extra);
  }
}

/** @param {string} name @returns {Storage | null} */
function storage(name) {
  try {
    const s = g[name];
    s.getItem('herald');
    return s;
  } catch {
    return null;
  }
}

/** `topic:seq,...` to a Map. @param {unknown} text */
function parseCursor(text) {
  const m = new Map();
  for (const part of String(text || '').split(',')) {
    const i = part.lastIndexOf(':');
    const n = Number(part.slice(i + 1));
    if (i > 0 && Number.isInteger(n) && n >= 0) m.set(part.slice(0, i), n);
  }
  return m;
}

/** The claims of a JWT, if they can be read. @param {string} token */
function claims(token) {
  try {
    const b = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(g.atob(b + '==='.slice((b.length + 3) % 4))) || {};
  } catch {
    return {};
  }
}

/** The `exp` claim of a JWT (0: none). @param {string} token */
const jwtExp = (token) => +claims(token).exp || 0;

/** A non-2xx answer as a HeraldError. @param {Response} res */
async function problem(res) {
  let p = {};
  try {
    p = await res.json();
  } catch {}
  return new HeraldError(p.code || 'http_' + res.status, p.detail || p.title || 'HTTP ' + res.status, {
    status: res.status,
    alien: !p.code,
    retryAfter: Number(res.headers.get('retry-after')) || undefined,
  });
}

/** A subscription: what `subscribe` returns. */
export class Subscription {
  /** @param {Herald} h @param {string} topic @param {Function | null} fn */
  constructor(h, topic, fn, o, seq) {
    /** The topic. */
    this.topic = topic;
    /** The seq of the last event seen (undefined: live, position not known yet). @type {number | undefined} */
    this.seq = seq;
    /** False once unsubscribed, or stopped by the server (`forbidden`). */
    this.active = true;
    /** Resolves once the server confirmed the topic; rejects (HeraldError) if it never will. */
    this.ready = new Promise((ok, no) => ((this._ok = ok), (this._no = no)));
    // Pages that ignore it see no unhandled rejection.
    this.ready.catch(() => {});
    this._h = h;
    this._fn = fn;
    this._o = o;
  }

  /** Stops delivery to this handler; the topic is left when no handler remains. */
  unsubscribe() {
    this._h._remove(this);
  }
}

/**
 * A connection to Herald, shared by every subscription of this instance (and,
 * with tab sharing, by every tab of the origin).
 *
 * Events: `state` (a State, then `{previous, reason, retryIn}`), `reset`
 * (`{topic, from}`: events before seq `from` are gone), `error` (a
 * HeraldError), `frame` (`{direction, transport, data}`: every frame, SSE
 * message and poll answer). Listen with `on(name, fn)`, which returns a
 * function that removes the listener.
 */
export class Herald {
  /**
   * @param {string} url the Herald base URL (`https://herald.example.com`);
   *   relative to the page when it does not start with a scheme
   * @param {import('./client').HeraldOptions} [options]
   */
  constructor(url, options = {}) {
    const o = (this._o = {
      transports: ALL,
      openTimeout: 5000,
      minDelay: 500,
      maxDelay: 20000,
      stableAfter: 10000,
      heartbeat: 25000,
      pongTimeout: 10000,
      pollWait: 25,
      pollLimit: 100,
      pauseWhenHidden: true,
      share: true,
      persist: false,
      upgradeAfter: 30000,
      ...options,
    });
    url = String(url || '').replace(/\/+$/, '');
    if (!/^\w+:\/\//.test(url)) url = (g.location ? g.location.origin : '') + (url && url[0] !== '/' ? '/' : '') + url;
    /** The base URL. */
    this.url = url;
    this._origin = (url.match(/^\w+:\/\/[^/]+/) || [url])[0];
    this._fetch = o.fetch || (g.fetch && g.fetch.bind(g));
    this._WS = 'WebSocket' in o ? o.WebSocket : g.WebSocket;
    this._ES = 'EventSource' in o ? o.EventSource : g.EventSource;
    this._order = o.transports.filter((k) =>
      // SSE without EventSource needs streaming fetch (React Native has none).
      k === 'websocket' ? this._WS : k === 'sse' ? this._ES || (this._fetch && g.ReadableStream && g.TextDecoder) : k === 'poll' && this._fetch,
    );
    if (!this._order.length) throw new TypeError('herald: none of the transports ' + o.transports + ' can run here');
    this._auth = !!(o.token || o.getToken);
    this._tok = o.token || null;
    if (o.token) this._expires(jwtExp(o.token));
    /** @type {Map<string, Set<Subscription>>} */
    this._subs = new Map();
    /** Per topic: the seq sent as `since` to the server. @type {Map<string, number | undefined>} */
    this._held = new Map();
    /** Per topic: the connection's position. @type {Map<string, number>} */
    this._cur = new Map();
    /** Topics the server confirmed on the current connection. @type {Set<string>} */
    this._live = new Set();
    /** @type {Record<string, Set<Function>>} */
    this._l = { state: new Set(), reset: new Set(), error: new Set(), frame: new Set() };
    // Lifecycle lines go to `logger` (console by default) when `debug` is on (by default with a logger).
    this._lg = o.logger || g.console;
    this._dbg = (o.debug ?? !!o.logger) && this._lg;
    /** @type {State} */
    this._state = 'connecting';
    this._tries = this._probes = 0;
    this._conn = null;
    this._un = [];
    const sess = storage('sessionStorage');
    this._memKey = 'herald:transport:' + this._origin;
    const kind = worked.get(this._memKey) || (sess && sess.getItem(this._memKey));
    this._ti = this._ti0 = Math.max(0, this._order.indexOf(kind));
    this._mem = sess;
    const p = o.persist;
    this._store = p === 'session' ? sess : p === 'local' ? storage('localStorage') : p || null;

    const on = (t, ev, fn) => {
      if (t && t.addEventListener) {
        t.addEventListener(ev, fn);
        this._un.push(() => t.removeEventListener(ev, fn));
      }
    };
    on(g.document, 'visibilitychange', () => this._hidden() || this._poke());
    on(g.window, 'online', () => this._poke());
    on(g.window, 'offline', () => this._conn && this._conn.check(true));
    this._iv = setInterval(() => this._tick(), Math.min(5000, o.heartbeat / 4) || 5000);
    this._leader = true;
    const BC = g.BroadcastChannel;
    const locks = g.navigator && g.navigator.locks;
    if (o.share && BC && locks && locks.request) {
      // Tabs share with tabs of the same user (token `sub`) or named group only.
      const go = (t) => this._closed || this._share(BC, locks, typeof o.share === 'string' ? o.share : '@' + (claims(t).sub || ''));
      this._leader = false;
      if (typeof o.share === 'string' || !o.getToken) go(o.token);
      else this._token().then(go, () => ((this._leader = true), this._later()));
    }
  }

  /** Checks the connection, or the leader. */
  _tick() {
    if (this._conn) this._conn.check(false);
    if (!this._ch || this._leader) return;
    const n = now();
    if (n - this._seen < this._o.heartbeat) return;
    // A silent leader is asked; one that does not answer is frozen: take over.
    if (!this._pingAt) {
      this._pingAt = n;
      this._post({ t: 'ping' });
    } else if (n - this._pingAt > this._o.pongTimeout) this._lock(true);
  }

  /** The connection state. @returns {State} */
  get state() {
    return this._state;
  }

  /** The transport in use (undefined while none is, or in a follower tab). */
  get transport() {
    return this._conn ? this._conn.kind : undefined;
  }

  /** Listens to `state`, `reset`, `error` or `frame`; returns a function that removes the listener. */
  on(name, fn) {
    const set = this._l[name];
    if (!set) throw new TypeError('herald: no event ' + name);
    set.add(fn);
    return () => set.delete(fn);
  }

  /**
   * Delivers every event of `topic` to `handler`, once each and in order.
   * `since`: the seq already seen (0: everything retained), or a cursor
   * text; without it, the persisted position if any, else live events only.
   * @param {string} topic
   * @param {(event: HeraldEvent) => void} handler
   * @param {import('./client').SubscribeOptions} [options]
   */
  subscribe(topic, handler, options = {}) {
    if (typeof topic !== 'string' || topic.length > 255 || !TOPIC.test(topic))
      throw new TypeError('herald: invalid topic ' + JSON.stringify(topic));
    if (typeof handler !== 'function') throw new TypeError('herald: the handler must be a function');
    if (this._closed) throw new Error('herald: closed');
    let seq = options.since;
    if (typeof seq === 'string') seq = parseCursor(seq).get(topic);
    if (seq == null && this._store) {
      const v = this._store.getItem(this._key(topic));
      if (v) seq = Number(v);
    }
    if (!(Number.isInteger(seq) && seq >= 0)) seq = undefined;
    if (seq === undefined && this._leader) seq = this._cur.get(topic);
    const s = new Subscription(this, topic, handler, options, seq);
    this._add(s);
    if (this._leader && this._live.has(topic)) s._ok();
    this._announce(topic);
    this._later();
    return s;
  }

  /** Closes the connection and every subscription. The state becomes `closed`. */
  close() {
    this._close('close()', new HeraldError('closed', 'the client was closed'));
  }

  /** Closes for `reason`; subscriptions not live yet reject with `err`. */
  _close(reason, err) {
    if (this._closed) return;
    this._closed = true;
    clearInterval(this._iv);
    for (const t of [this._timer, this._refreshT, this._probeT, this._q, this._gapT]) clearTimeout(t);
    // Closed by the page: pending acknowledgments still go. Otherwise (logged out, refused) nothing more is sent.
    if (reason !== 'close()') clearTimeout(this._ackT);
    if (this._conn) this._conn.close();
    this._conn = null;
    for (const f of this._un) f();
    if (this._ch) {
      if (!this._leader) this._post({ t: 'bye' });
      this._ac.abort();
      if (this._release) this._release();
      this._ch.close();
    }
    for (const set of this._subs.values()) for (const s of set) (s.active = false), s._no(err);
    this._subs.clear();
    this._setState('closed', reason);
  }

  /** Stops for good (logged out, a protocol the server does not speak). */
  _end(reason, err) {
    if (err) this._emit('error', err);
    this._close(reason, err || new HeraldError(reason, 'closed: ' + reason));
  }

  /** Web Push for this browser: see client-push.js (loaded on first use). */
  async registerPush(registration, options) {
    return (await import('./client-push.js')).registerPush(this, registration, options, problem);
  }

  // ---- subscriptions and delivery ----

  _add(s) {
    let set = this._subs.get(s.topic);
    if (!set) this._subs.set(s.topic, (set = new Set()));
    set.add(s);
  }

  _remove(s) {
    const set = this._subs.get(s.topic);
    s.active = false;
    s._no(new HeraldError('unsubscribed', 'unsubscribed from ' + s.topic + ' before the server confirmed it'));
    if (!set || !set.delete(s)) return;
    if (!set.size) this._subs.delete(s.topic);
    this._announce(s.topic);
    this._later();
  }

  /** Per topic, the lowest seq any subscription holds (undefined: live only). */
  _want() {
    const m = new Map();
    for (const [t, set] of this._subs) {
      let p;
      for (const s of set) if (s.seq !== undefined && !(p <= s.seq)) p = s.seq;
      m.set(t, p);
    }
    return m;
  }

  _key(topic) {
    return 'herald:' + this.url + ':' + topic;
  }

  /** A server event: checked, relayed to other tabs, delivered. */
  _event(e) {
    if (!e || typeof e !== 'object' || typeof e.topic !== 'string' || !Number.isInteger(e.seq))
      return this._err('bad_frame', 'the server sent a malformed event');
    if (this._held.has(e.topic)) this._cur.set(e.topic, e.seq);
    this._post({ t: 'ev', e });
    this._deliver(e);
  }

  _deliver(e) {
    let ran = false;
    for (const s of this._subs.get(e.topic) || []) {
      if (s.seq !== undefined && e.seq <= s.seq) continue;
      if (s.seq !== undefined && e.seq > s.seq + 1) {
        // A gap: this subscription is behind the connection (it joined with
        // an older position); the replay brings the missing events first.
        this._gap();
        continue;
      }
      s.seq = e.seq;
      if (s._fn)
        try {
          ran = true;
          s._fn(e);
        } catch (x) {
          this._err('handler', 'a handler of ' + e.topic + ' threw: ' + x, { topics: [e.topic], cause: x });
        }
    }
    if (ran && this._store)
      try {
        this._store.setItem(this._key(e.topic), String(e.seq));
      } catch {}
    // Other tabs acknowledge their own.
    if (ran && this._o.ack === 'auto') this.ack(e);
  }

  /**
   * Acknowledges `event` and everything before it on its topic (`ack:
   * 'manual'`; `'auto'` does it once the handlers return). Batched: sent
   * within 100 ms, on the WebSocket or with POST /v1/ack.
   * @param {{topic: string, seq: number}} e
   */
  ack(e) {
    const a = (this._acks ||= new Map());
    if (!(a.get(e.topic) >= e.seq)) a.set(e.topic, e.seq);
    this._ackT ||= setTimeout(() => {
      this._ackT = 0;
      const cursor = [...a].map((p) => p.join(':')).join(',');
      a.clear();
      const c = this._conn;
      if (c && c.ready && c.ack) return c.ack(cursor);
      this._init().then((i) =>
        this._fetch(this.url + '/v1/ack', { ...i, method: 'POST', headers: { ...i.headers, 'Content-Type': 'application/json' }, body: JSON.stringify({ cursor }) }),
      ).then((r) => r.ok || problem(r).then((x) => this._emit('error', x)), () => {});
    }, 100);
  }

  _gap() {
    if (!this._gapT) this._gapT = setTimeout(() => ((this._gapT = 0), this._sync()), 1000);
  }

  /** Where the connection stands in `topic`: live subscriptions start there. */
  _seat(topic, seq) {
    if (!Number.isInteger(seq)) return;
    if (this._leader) {
      if (!this._held.has(topic)) return;
      // Once per connection and topic: SSE ids repeat it.
      if (!this._cur.has(topic)) this._cur.set(topic, seq), this._post({ t: 'seat', topic, seq });
    }
    for (const s of this._subs.get(topic) || []) if (s.seq === undefined) s.seq = seq;
  }

  /**
   * Events before seq `from` of `topic` are gone. `sent`: the position the
   * connection resumed from, to tell a gap (from > sent + 1) from a
   * position beyond the topic's head (from <= sent).
   */
  _reset(topic, from, sent) {
    if (typeof topic !== 'string' || !Number.isInteger(from)) return this._err('bad_frame', 'the server sent a malformed reset');
    if (this._leader) {
      sent = this._held.get(topic);
      this._cur.set(topic, from - 1);
      this._post({ t: 'reset', topic, from, sent });
    }
    const beyond = sent !== undefined && from <= sent;
    for (const s of this._subs.get(topic) || []) {
      if (s.seq !== undefined && (beyond ? s.seq >= from : s.seq < from - 1)) {
        s.seq = from - 1;
        if (s._o && s._o.onReset) s._o.onReset({ topic, from });
      }
    }
    this._emit('reset', { topic, from });
  }

  /** Stops the subscriptions of `topics` with an error. */
  _stop(topics, err) {
    topics = topics.filter((t) => this._subs.has(t));
    if (!topics.length) return;
    for (const t of topics) {
      for (const s of this._subs.get(t)) {
        s.active = false;
        s._no(err);
        if (s._o && s._o.onError) s._o.onError(err);
      }
      this._subs.delete(t);
      this._live.delete(t);
    }
    this._post({ t: 'stop', topics, code: err.code, message: err.message });
    err.topics = topics;
    this._emit('error', err);
    this._later();
  }

  /** A server `error` (frame or SSE event). */
  _serverError(code, message, topics) {
    const err = new HeraldError(String(code || 'error'), String(message || code), { topics });
    if (Array.isArray(topics) && topics.length && ['forbidden', 'invalid_topic', 'too_many_topics'].includes(code))
      this._stop(topics, err);
    else this._emit('error', err);
  }

  // ---- events ----

  _emit(name, arg, more) {
    if (name === 'error') {
      // A closed client has nothing more to report.
      if (this._closed) return;
      if (!this._l.error.size && this._lg) this._lg.warn('[herald] ' + arg.code + ': ' + arg.message);
    }
    for (const fn of [...this._l[name]])
      try {
        fn(arg, more);
      } catch (x) {
        setTimeout(() => {
          throw x;
        });
      }
  }

  _err(code, message, extra) {
    this._emit('error', new HeraldError(code, message, extra));
  }

  /** `reason`: why (`connect`, `closed:1012`, `network`, ...); `retryIn`: ms until the next try. */
  _setState(s, reason, retryIn) {
    const previous = this._state;
    if (s === previous) return;
    this._state = s;
    this._log('state ' + previous + ' -> ' + s + ' (' + reason + ')');
    this._post({ t: 'state', s, r: reason });
    this._emit('state', s, { previous, reason, retryIn });
  }

  /** A lifecycle line, with `debug`. */
  _log(text) {
    if (this._dbg) this._dbg.debug('[herald] ' + text);
  }

  /** A frame for `frame` listeners: `direction` 'in' or 'out'. */
  _frame(direction, transport, data) {
    if (this._l.frame.size) this._emit('frame', { direction, transport, data });
  }

  /** The server confirmed `topics`: their subscriptions are live (also in follower tabs). */
  _confirm(topics) {
    if (!Array.isArray(topics)) return;
    topics = topics.filter((t) => this._held.has(t));
    for (const t of topics) {
      this._live.add(t);
      for (const s of this._subs.get(t) || []) s._ok();
    }
    if (topics.length) this._post({ t: 'live', topics });
  }

  // ---- tokens ----

  /**
   * The token to use; `force` asks getToken() for a fresh one. Single-flight:
   * concurrent callers share one getToken() call.
   * @returns {Promise<string | null>}
   */
  _token(force) {
    const o = this._o;
    if (!o.getToken) return Promise.resolve(this._tok);
    if (!force && this._tok && !(this._exp && this._exp * 1000 - now() < 1000)) return Promise.resolve(this._tok);
    return (this._tokP ||= (async () => {
      try {
        const t = await o.getToken();
        if (t === null) {
          // Logged out: stop for good.
          this._end('logged_out');
          throw new HeraldError('logged_out', 'getToken() returned null: logged out');
        }
        if (!t || typeof t !== 'string') throw new HeraldError('token', 'getToken() returned no token');
        this._tok = t;
        this._expires(jwtExp(t));
        this._log('token refreshed');
        return t;
      } catch (e) {
        const err = e instanceof HeraldError ? e : new HeraldError('token', 'getToken() failed: ' + ((e && e.message) || e), { cause: e });
        this._emit('error', err);
        throw err;
      } finally {
        this._tokP = null;
      }
    })());
  }

  /** Schedules the refresh of a token that expires at `exp` (seconds). */
  _expires(exp) {
    this._exp = exp;
    clearTimeout(this._refreshT);
    if (!exp || !this._o.getToken || this._closed) return;
    const left = exp * 1000 - now();
    const wait = Math.max(1000, left - Math.min(60000, left / 2));
    this._refreshT = after(() => (wait > MAX_MS ? this._expires(exp) : this._refresh()), wait);
  }

  /** A fresh token, handed to the connection (in-band `auth`, or a new ticket). */
  _refresh() {
    this._token(true).then(
      (t) => this._conn && this._conn.auth && this._conn.auth(t),
      () => {},
    );
  }

  /** Headers and credentials mode for a fetch. */
  async _init(signal) {
    const t = this._auth ? await this._token() : null;
    return {
      headers: t ? { Authorization: 'Bearer ' + t } : {},
      credentials: t ? 'same-origin' : 'include',
      signal,
    };
  }

  /** A single-use ticket for a URL (EventSource). */
  async _ticket() {
    const init = await this._init();
    const res = await this._fetch(this.url + '/v1/tickets', { ...init, method: 'POST' });
    if (!res.ok) throw await problem(res);
    const body = await res.json();
    if (!body || typeof body.ticket !== 'string') throw new HeraldError('bad_response', 'POST /v1/tickets answered without a ticket');
    return body.ticket;
  }

  /** GET /v1/poll for the held topics, from the connection's positions. */
  async _poll(wait, signal, record) {
    const topics = [...this._held.keys()];
    let q = '/v1/poll?protocol=' + PROTOCOL + '&topic=' + topics.map(encodeURIComponent).join(',') + '&wait=' + wait + '&limit=' + this._o.pollLimit;
    const since = this._since(topics, record);
    if (since) q += '&since=' + encodeURIComponent(since);
    if (this._o.ack) q += '&resume=ack';
    this._frame('out', 'poll', 'GET ' + q);
    const res = await this._fetch(this.url + q, await this._init(signal));
    if (!res.ok) throw await problem(res);
    let b;
    try {
      b = await res.json();
    } catch {}
    this._frame('in', 'poll', b);
    if (!b || !Array.isArray(b.events) || !Array.isArray(b.resets) || typeof b.cursor !== 'string')
      throw new HeraldError('bad_response', 'the poll answer is not {"events","resets","cursor"}');
    return b;
  }

  /** The cursor text to resume `topics` from; `record` notes it as sent. */
  _since(topics, record) {
    const parts = [];
    for (const t of topics) {
      const p = this._cur.get(t);
      if (record) this._held.set(t, p);
      if (p !== undefined) parts.push(t + ':' + p);
    }
    return parts.join(',');
  }

  /** What to do after a failed HTTP request or a network error. */
  _how(e, opened) {
    const s = e && e.status;
    const why = s ? 'http:' + s : 'network';
    // Not Herald's answer (a proxy refusing) before the transport worked: try the next one.
    if (s && e.alien && !opened) return { fallback: true, why };
    if (!s) {
      if (e instanceof HeraldError) {
        if (e.code !== 'token') this._emit('error', e);
        return { why: e.code };
      }
      return { net: true, why };
    }
    if (e.code === 'unsupported_protocol') return this._end(e.code, e), {};
    if (s === 401) return { auth: e, why: 'token' };
    if (s === 403 && e.code === 'forbidden') {
      const held = [...this._held.keys()];
      const words = e.message.split(/[\s,]+/).map((w) => w.replace(/\.$/, ''));
      const named = held.filter((t) => words.includes(t));
      this._stop(named.length ? named : held, e);
      return { prompt: true, why: 'forbidden' };
    }
    if (s === 503 || s === 429) return { after: (e.retryAfter || 1) * 1000, why };
    this._emit('error', e);
    return { why };
  }

  _hidden() {
    if (!this._o.pauseWhenHidden || !g.document || g.document.visibilityState !== 'hidden') return false;
    // A leader polls for its follower tabs even when hidden.
    for (const set of this._subs.values()) for (const s of set) if (!s._fn) return false;
    return true;
  }

  // ---- the connection ----

  /** Soon: bring the connection in line with the subscriptions. */
  _later() {
    if (!this._q && !this._closed) this._q = setTimeout(() => ((this._q = 0), this._sync()));
  }

  _sync() {
    if (this._closed || !this._leader) return;
    const want = this._want();
    const c = this._conn;
    if (!c) {
      if (!this._timer && want.size) this._connect();
      return;
    }
    if (!c.ready) return;
    const add = [];
    const del = [];
    for (const [t, p] of want) {
      if (!this._held.has(t)) add.push(t);
      else if (p !== undefined && !(this._cur.get(t) <= p)) {
        // Someone needs older events: resubscribe from there.
        del.push(t);
        add.push(t);
      }
    }
    for (const t of this._held.keys()) if (!want.has(t)) del.push(t);
    if (!add.length && !del.length) return;
    for (const t of del) {
      this._held.delete(t);
      this._cur.delete(t);
      this._live.delete(t);
    }
    for (const t of add) {
      const p = want.get(t);
      this._held.set(t, p);
      if (p === undefined) this._cur.delete(t);
      else this._cur.set(t, p);
    }
    c.apply(add, del);
  }

  _connect() {
    clearTimeout(this._timer);
    this._timer = 0;
    if (this._closed || !this._leader || this._conn) return;
    // Even if navigator.onLine is false: it lies behind VPNs, in WebViews.
    this._held.clear();
    this._cur.clear();
    this._live.clear();
    const kind = this._order[this._ti];
    this._log(kind + ': connecting to ' + this.url);
    this._conn = (kind === 'websocket' ? ws : kind === 'sse' ? sse : poll)(this);
    this._sync();
  }

  /** The connection works: remember its transport for the origin. */
  _open(c) {
    if (c !== this._conn) return;
    this._proven = c.kind;
    this._misses = 0;
    this._openAt = now();
    this._ti0 = this._ti;
    // Only refusals are remembered, not timeouts (a slow network).
    if (!this._slow) {
      worked.set(this._memKey, c.kind);
      try {
        this._mem && this._mem.setItem(this._memKey, c.kind);
      } catch {}
    }
    this._slow = false;
    this._upgrade(c);
    this._log(c.kind + ': open');
    this._setState('open', 'connect');
  }

  /** After a fallback, tries the WebSocket again later. */
  _upgrade(c) {
    clearTimeout(this._probeT);
    if (this._ti && this._order[0] === 'websocket')
      this._probeT = after(() => this._probe(c), this._o.upgradeAfter * 2 ** Math.min(6, this._probes));
  }

  /** Moves to a WebSocket if one gets through now. */
  async _probe(c) {
    let sock;
    let t;
    const end = (ok) => {
      clearTimeout(t);
      if (sock) (sock.onopen = sock.onmessage = sock.onclose = null), sock.close();
      sock = null;
      if (c !== this._conn || this._closed) return;
      if (!ok) return this._probes++, this._upgrade(c);
      this._probes = 0;
      this._ti = this._ti0 = 0;
      this._log('upgrading from ' + c.kind + ' to websocket');
      c.close();
      this._conn = null;
      this._connect();
    };
    try {
      const token = this._auth ? await this._token() : null;
      if (c !== this._conn) return;
      sock = new this._WS(this.url.replace(/^http/, 'ws') + '/v1/ws?protocol=' + PROTOCOL);
      t = after(() => end(false), this._o.openTimeout);
      sock.onopen = () => sock.send(JSON.stringify(token ? { op: 'auth', token } : { op: 'ping' }));
      sock.onmessage = () => end(true);
      sock.onclose = () => end(false);
    } catch {
      end(false);
    }
  }

  /**
   * The connection `c` is gone. `how`: `fallback` (it never worked: try the
   * next transport), `prompt` (a drain: come back soon, jittered), `auth` (a
   * fresh token first), `after` (ms, the server's Retry-After), else back
   * off exponentially with full jitter.
   */
  _lost(c, how) {
    if (c !== this._conn) return;
    c.close();
    this._conn = null;
    this._live.clear();
    if (this._closed) return;
    const why = how.why || 'network';
    const o = this._o;
    if (this._openAt && now() - this._openAt >= o.stableAfter) this._tries = 0;
    this._openAt = 0;
    let delay;
    // A transport that worked here before is a node refusing (draining, full), not a proxy: retry it first.
    if (how.fallback && this._order[this._ti] === this._proven && this._misses++ < 3) how = {};
    if (how.fallback && this._ti < this._order.length - 1) {
      this._ti++;
      this._slow ||= !!how.slow;
      delay = 0;
      this._log(c.kind + ' failed (' + why + '): falling back to ' + this._order[this._ti]);
    } else {
      this._ti = this._ti0;
      this._slow = false;
      if (how.fallback) this._err('network', 'no transport could connect to ' + this.url);
      if (how.auth) {
        this._tok = this._o.getToken ? null : this._tok;
        if (!this._o.getToken)
          this._emit('error', how.auth instanceof HeraldError ? how.auth : new HeraldError('unauthorized', 'the server refused the credentials'));
      }
      const backoff = rand(Math.min(o.maxDelay, o.minDelay * 2 ** this._tries++));
      delay = Math.round(how.prompt ? rand(o.minDelay * 2) : how.after ? how.after + rand(o.minDelay) : backoff);
      this._log(c.kind + ' lost (' + why + '): retry in ' + delay + ' ms');
    }
    const off = g.navigator && g.navigator.onLine === false;
    this._setState(off ? 'offline' : 'reconnecting', off ? 'offline' : why, delay);
    this._timer = after(() => this._connect(), delay);
  }

  /** Check the connection now (tab visible again, back online). */
  _poke() {
    if (this._conn) this._conn.check(true);
    else if (this._want().size) this._connect();
  }

  // ---- tab sharing ----

  _share(BC, locks, key) {
    const name = (this._name = 'herald:' + this.url + ':' + key);
    this._locks = locks;
    this._id = Math.random().toString(36).slice(2);
    this._ch = new BC(name);
    this._ch.onmessage = (m) => this._msg(m.data);
    this._lock();
    this._announce();
    const w = g.window;
    const hide = () => this._leader || this._post({ t: 'bye' });
    const show = (e) => e.persisted && this._leader === false && this._announce();
    if (w && w.addEventListener) {
      w.addEventListener('pagehide', hide);
      w.addEventListener('pageshow', show);
      this._un.push(() => (w.removeEventListener('pagehide', hide), w.removeEventListener('pageshow', show)));
    }
  }

  /** Asks for the leader's lock (`steal`: from a frozen leader). */
  _lock(steal) {
    if (this._ac) this._ac.abort();
    const ac = (this._ac = new AbortController());
    this._pingAt = 0;
    this._seen = now();
    this._locks
      .request(this._name, steal ? { steal } : { signal: ac.signal }, () =>
        this._closed || ac !== this._ac
          ? 0
          : new Promise((release) => {
              this._release = release;
              this._leader = true;
              // The state mirrored from the previous leader no longer holds.
              if (this._state === 'open') this._setState('reconnecting', 'leader');
              this._post({ t: 'lead' });
              this._later();
            }),
      )
      .catch(() => ac === this._ac && this._leader && this._demote());
  }

  /** Another tab took the lead (this one froze). */
  _demote() {
    this._leader = false;
    clearTimeout(this._timer);
    this._timer = 0;
    if (this._conn) this._conn.close();
    this._conn = null;
    if (this._release) this._release();
    for (const [t, set] of this._subs) {
      for (const s of set) if (!s._fn) set.delete(s);
      if (!set.size) this._subs.delete(t);
    }
    this._lock();
    this._announce();
  }

  _post(m) {
    if (!this._ch || (m.t !== 'bye' && this._closed)) return;
    if (!this._leader && !FOLLOWER.includes(m.t)) return;
    m.id = this._id;
    try {
      this._ch.postMessage(m);
    } catch {}
  }

  /** A follower tells the leader what it needs: one topic, or all. */
  _announce(topic) {
    if (this._leader || !this._ch) return;
    const want = this._want();
    for (const t of topic ? [topic] : want.keys())
      this._post(want.has(t) ? { t: 'sub', topic: t, seq: want.get(t) } : { t: 'unsub', topic: t });
  }

  _msg(m) {
    if (!m || typeof m !== 'object' || this._closed) return;
    if (this._leader) {
      if (m.t === 'lead') return this._demote();
      if (m.t === 'ping') return this._post({ t: 'state', s: this._state });
      if (!FOLLOWER.includes(m.t)) return;
      // A follower's needs are held as handler-less subscriptions.
      for (const [t, set] of this._subs)
        for (const s of set)
          if (!s._fn && s._r === m.id && (m.t === 'bye' || t === m.topic)) {
            set.delete(s);
            if (!set.size) this._subs.delete(t);
          }
      if (m.t === 'sub' && typeof m.topic === 'string') {
        const c = this._cur.get(m.topic);
        const s = new Subscription(this, m.topic, null, null, Number.isInteger(m.seq) ? m.seq : c);
        s._r = m.id;
        this._add(s);
        this._post({ t: 'seat', topic: m.topic, seq: c });
        if (this._live.has(m.topic)) this._post({ t: 'live', topics: [m.topic] });
      }
      this._post({ t: 'state', s: this._state });
      this._later();
      return;
    }
    if (FOLLOWER.includes(m.t)) return;
    this._seen = now();
    this._pingAt = 0;
    if (m.t === 'lead') this._announce();
    else if (m.t === 'seat') this._seat(m.topic, m.seq);
    else if (m.t === 'state') this._setState(m.s, m.r || 'leader');
    else if (m.t === 'live') for (const t of m.topics || []) for (const s of this._subs.get(t) || []) s._ok();
    else if (m.t === 'ev') this._deliver(m.e);
    else if (m.t === 'reset') this._reset(m.topic, m.from, m.sent);
    else if (m.t === 'stop') this._stop(m.topics, new HeraldError(m.code, m.message));
  }
}

// ---- transports: {kind, ready, apply(add, del), check(force), close(), auth?(token)} ----

/** WebSocket: in-band auth, subscribe frames, `ping` frames for liveness. */
function ws(h) {
  const o = h._o;
  const c = { kind: 'websocket', ready: false };
  let sock;
  let opened = false;
  let dead = false;
  let last = now();
  let pingAt = 0;
  let timer;
  const send = (f) => {
    h._frame('out', 'websocket', f);
    try {
      sock.send(JSON.stringify(f));
    } catch {}
  };
  const fail = (how) => {
    if (!dead) h._lost(c, how);
  };
  c.close = () => {
    dead = true;
    clearTimeout(timer);
    if (sock) {
      sock.onopen = sock.onmessage = sock.onclose = sock.onerror = null;
      try {
        sock.close(1000);
      } catch {}
    }
  };
  c.apply = (add, del) => {
    if (del.length) send({ op: 'unsubscribe', topics: del });
    if (add.length) {
      const f = { op: 'subscribe', topics: add, since: h._since(add, true) || undefined };
      if (o.ack) f.resume = 'ack';
      send(f);
    }
  };
  c.auth = (token) => send({ op: 'auth', token });
  c.ack = (cursor) => send({ op: 'ack', cursor });
  c.check = (force) => {
    const n = now();
    if (pingAt > last) {
      if (n - pingAt > o.pongTimeout) fail({ why: 'timeout' });
    } else if (c.ready && (force || n - last > o.heartbeat)) {
      pingAt = n;
      send({ op: 'ping' });
      if (force) after(() => !dead && c.check(false), o.pongTimeout + 50);
    }
  };
  const frame = (f) => {
    switch (f.op) {
      case 'event': {
        const { op, ...e } = f;
        return h._event(e);
      }
      case 'subscribed':
        // Where each topic starts (with resume=ack the heads are not).
        if (f.cursor || !o.ack) for (const [t, s] of parseCursor(f.cursor || f.heads)) h._seat(t, s);
        return h._confirm(f.topics);
      case 'reset':
        return h._reset(f.topic, f.from);
      case 'error':
        return h._serverError(f.code, f.message, f.topics);
      case 'expiring':
        return h._refresh();
      case 'authenticated':
        if (o.getToken && Number.isFinite(f.exp)) h._expires(f.exp);
    }
  };
  (async () => {
    let token = null;
    if (h._auth)
      try {
        token = await h._token();
      } catch {
        return fail({ why: 'token' });
      }
    if (dead) return;
    try {
      sock = new h._WS(h.url.replace(/^http/, 'ws') + '/v1/ws?protocol=' + PROTOCOL);
    } catch (e) {
      h._err('network', 'cannot open a WebSocket: ' + e);
      return fail({ fallback: true });
    }
    timer = after(() => fail({ fallback: !opened, slow: true, why: 'timeout' }), o.openTimeout);
    sock.onopen = () => {
      if (token) send({ op: 'auth', token });
      c.ready = true;
      h._sync();
      if (!token && !h._held.size) send({ op: 'ping' });
    };
    sock.onmessage = (m) => {
      last = now();
      let f;
      try {
        f = JSON.parse(m.data);
      } catch {}
      h._frame('in', 'websocket', f || m.data);
      if (!f || typeof f !== 'object' || Array.isArray(f) || typeof f.op !== 'string')
        return h._err('bad_frame', 'the server sent a frame that is not a JSON object with an "op"');
      if (f.op === 'error' && f.code === 'unsupported_protocol') return h._end(f.code, new HeraldError(f.code, String(f.message)));
      if (!opened) {
        opened = true;
        clearTimeout(timer);
        h._open(c);
      }
      frame(f);
    };
    // Refused (Node then reports no close); a slow network times out.
    sock.onerror = () => opened || fail({ fallback: true });
    sock.onclose = (e) => {
      const code = e.code;
      const why = e.reason || 'closed with ' + code;
      const r = 'closed:' + code;
      h._log('websocket: ' + r + (e.reason ? ' ' + e.reason : ''));
      if (code === 4426) return h._end('unsupported_protocol', new HeraldError('unsupported_protocol', why));
      if (code === 1012) return fail({ prompt: true, why: r });
      if (code === 4001) return fail({ auth: new HeraldError('unauthorized', why), why: r });
      if (code === 4003) h._stop([...h._held.keys()], new HeraldError('forbidden', why));
      else if (code === 4400 || code === 1009 || code === 1011) h._err(code === 1011 ? 'unavailable' : 'protocol', why);
      // Closed before any frame, not by Herald: a proxy blocking WebSockets.
      fail({ fallback: !opened && code < 4000 && ![1009, 1011, 1012, 1013].includes(code), why: r });
    };
  })();
  return c;
}

/** Server-Sent Events: EventSource (a ticket or the cookie), else fetch streaming. */
function sse(h) {
  const o = h._o;
  const c = { kind: 'sse', ready: true };
  let opened = false;
  let dead = false;
  let gen = 0;
  let last = now();
  let es;
  let ac;
  let timer;
  let probing;
  const stop = () => {
    gen++;
    clearTimeout(timer);
    if (es) es.close();
    if (ac) ac.abort();
    es = ac = null;
  };
  const fail = (how) => {
    if (!dead) h._lost(c, how);
  };
  c.close = () => {
    dead = true;
    stop();
  };
  const up = () => {
    clearTimeout(timer);
    last = now();
    if (!opened) {
      opened = true;
      h._open(c);
    }
  };
  const msg = (type, data, id) => {
    last = now();
    h._frame('in', 'sse', { event: type, id, data });
    if (type === 'drain') return fail({ prompt: true, why: 'drain' });
    let d;
    try {
      d = JSON.parse(data);
    } catch {
      return h._err('bad_frame', 'the server sent an SSE message that is not JSON');
    }
    if (type === 'error') {
      const code = d && d.code;
      if (AUTH_CODES.includes(code)) return fail({ auth: code === 'token_expired' ? true : new HeraldError(code, d.message), why: 'token' });
      if (code !== 'slow_consumer') h._serverError(code, d && d.message);
      return fail({ why: String(code) });
    }
    if (type === 'reset') h._reset(d && d.topic, d && d.from);
    else if (type === 'message') h._event(d);
    if (id) for (const [t, s] of parseCursor(id)) h._seat(t, s);
    if (type === 'subscribed') h._confirm(d && d.topics);
  };
  const start = async () => {
    stop();
    const my = gen;
    const topics = [...h._held.keys()];
    if (!topics.length) return;
    let url = '/v1/sse?protocol=' + PROTOCOL + '&topic=' + topics.map(encodeURIComponent).join(',');
    const since = h._since(topics, true);
    if (since) url += '&since=' + encodeURIComponent(since);
    if (o.ack) url += '&resume=ack';
    h._frame('out', 'sse', 'GET ' + url);
    url = h.url + url;
    timer = after(() => fail({ fallback: !opened, slow: true, why: 'timeout' }), o.openTimeout);
    try {
      if (h._ES) {
        if (h._auth) {
          const ticket = await h._ticket();
          if (my !== gen) return;
          url += '&ticket=' + encodeURIComponent(ticket);
        }
        const s = (es = new h._ES(url, { withCredentials: !h._auth }));
        s.onopen = up;
        s.onmessage = (m) => msg('message', m.data, m.lastEventId);
        for (const k of ['reset', 'subscribed']) s.addEventListener(k, (m) => msg(k, m.data, m.lastEventId));
        s.addEventListener('drain', (m) => msg('drain', m.data));
        s.addEventListener('error', async (m) => {
          if (m.data !== undefined) return msg('error', m.data);
          // Failed; EventSource would retry with a used ticket: we retry ourselves.
          if (opened) return fail({ why: 'network' });
          // EventSource hides the status: a poll tells whether Herald refuses.
          stop();
          const mine = gen;
          let how = { fallback: true };
          try {
            await h._poll(0);
          } catch (e) {
            if (e && e.status && !e.alien) how = h._how(e, false);
          }
          if (mine === gen) fail(how);
        });
        return;
      }
      const a = (ac = new AbortController());
      const init = await h._init(a.signal);
      init.headers.Accept = 'text/event-stream';
      const res = await h._fetch(url, init);
      if (!res.ok) throw await problem(res);
      const reader = res.body && res.body.getReader && res.body.getReader();
      if (!reader || !/event-stream/.test(res.headers.get('content-type'))) {
        h._err('bad_response', 'GET /v1/sse did not answer an event stream');
        return fail({ fallback: !opened, why: 'bad_response' });
      }
      up();
      const dec = new TextDecoder();
      let buf = '';
      let ev = {};
      for (;;) {
        const { value, done } = await reader.read();
        if (my !== gen) return;
        if (done) return fail({ why: 'network' });
        last = now();
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i).replace(/\r$/, '');
          buf = buf.slice(i + 1);
          if (!line) {
            if (ev.data !== undefined) msg(ev.event || 'message', ev.data, ev.id);
            if (my !== gen) return;
            ev = {};
          } else if (line[0] !== ':') {
            const k = line.indexOf(':');
            const field = k < 0 ? line : line.slice(0, k);
            const val = k < 0 ? '' : line.slice(k + 1).replace(/^ /, '');
            if (field === 'data') ev.data = ev.data === undefined ? val : ev.data + '\n' + val;
            else if (field === 'event' || field === 'id') ev[field] = val;
          }
        }
      }
    } catch (e) {
      if (my === gen) fail(h._how(e, opened));
    }
  };
  c.apply = start;
  c.auth = start;
  c.check = async (force) => {
    if (!h._held.size || probing) return;
    const quiet = now() - last > 2 * o.heartbeat + 5000;
    if (!es) {
      if (quiet) fail({ why: 'timeout' });
      return;
    }
    if (es.readyState === 2) return fail({ why: 'network' });
    if (!force && !quiet) return;
    // EventSource hides the server's keepalive comments: ask a poll whether
    // anything was published that this stream did not bring.
    probing = true;
    const my = gen;
    try {
      const b = await h._poll(0, g.AbortSignal && AbortSignal.timeout && AbortSignal.timeout(o.pongTimeout));
      if (my !== gen) return;
      if (b.events.some((e) => !(e.seq <= h._cur.get(e.topic)))) fail({ prompt: true, why: 'missed' });
      else last = now();
    } catch (e) {
      if (my === gen && !(e && e.status)) fail({ why: 'timeout' });
    } finally {
      probing = false;
    }
  };
  return c;
}

/** Long polling from the connection's cursor; paused while the tab is hidden. */
function poll(h) {
  const o = h._o;
  const c = { kind: 'poll', ready: true };
  let opened = false;
  let dead = false;
  let gen = 0;
  let ac;
  let timer;
  let paused = false;
  let quick = true;
  c.close = () => {
    dead = true;
    gen++;
    clearTimeout(timer);
    if (ac) ac.abort();
  };
  const run = async () => {
    const my = ++gen;
    clearTimeout(timer);
    if (ac) ac.abort();
    paused = false;
    if (!h._held.size) return;
    if (opened && h._hidden()) return (paused = true);
    const wait = quick ? 0 : o.pollWait;
    const a = (ac = new AbortController());
    timer = after(() => a.abort(), wait * 1000 + o.openTimeout);
    let b;
    try {
      b = await h._poll(wait, a.signal, true);
    } catch (e) {
      if (my === gen && !dead) h._lost(c, a.signal.aborted ? { why: 'timeout' } : h._how(e, opened));
      return;
    }
    if (my !== gen) return;
    clearTimeout(timer);
    if (!opened) {
      opened = true;
      h._open(c);
    }
    h._confirm([...h._held.keys()]);
    quick = false;
    for (const r of b.resets) h._reset(r && r.topic, r && r.from);
    for (const e of b.events) h._event(e);
    for (const [t, s] of parseCursor(b.cursor)) {
      if (h._held.has(t)) h._cur.set(t, s);
      h._seat(t, s);
    }
    if (my === gen && !dead) run();
  };
  c.apply = () => {
    quick = true;
    run();
  };
  c.check = (force) => {
    if (paused && force && !h._hidden()) run();
  };
  return c;
}

export default Herald;
