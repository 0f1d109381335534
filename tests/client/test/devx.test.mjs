// What the client tells developers, on each transport against a real
// herald server: `sub.ready` (live, refused, ended first), the context of
// state changes, lifecycle lines (`debug`, `logger`), the `frame` event, a
// `getToken()` that says "logged out", and a server that does not speak the
// client's protocol version.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { collector, mint, publish, SSE_REQUEST, startHerald, startProxy, uniqueTopic, until, withTimeout, WS_UPGRADE } from './helpers.mjs';
import { TestEventSource } from './eventsource.mjs';

delete globalThis.BroadcastChannel;
const { Herald, HeraldError } = await import('../../../services/herald/static/client.js');

const HAS_WS = typeof globalThis.WebSocket === 'function';
const TRANSPORTS = HAS_WS ? ['websocket', 'sse', 'poll'] : ['sse', 'poll'];
const VARIANTS = [
  ...TRANSPORTS.map((transport) => ({ name: transport, transport, options: { transports: [transport] } })),
  { name: 'sse over EventSource', transport: 'sse', options: { transports: ['sse'], EventSource: TestEventSource } },
];
const FAST = { minDelay: 50, maxDelay: 500, openTimeout: 3000, pollWait: 2 };
const WAIT_MS = 15_000;
/** A window in which a client that should be silent would show otherwise (reconnects every 50-500 ms). */
const QUIET_MS = 1500;

/** Rejections nobody handled, while these tests run. */
const unhandled = [];
const onUnhandled = (reason) => unhandled.push(reason);

let server;
before(async () => {
  process.on('unhandledRejection', onUnhandled);
  server = await startHerald();
});
after(async () => {
  process.off('unhandledRejection', onUnhandled);
  await server?.stop();
});

/** Lets pending promise jobs and their unhandled-rejection checks run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

/** Resolves to the HeraldError `promise` rejects with (fails if it resolves). */
async function rejection(promise, what) {
  try {
    await withTimeout(promise, WAIT_MS, what);
  } catch (e) {
    return e;
  }
  assert.fail(`${what}: resolved`);
}

/** Wraps `fetch`, `WebSocket` and `EventSource` to count what a client asks for. */
function counted(options) {
  const counts = { fetch: 0, sockets: 0, streams: 0 };
  const wrapped = {
    fetch: (...args) => {
      counts.fetch++;
      return fetch(...args);
    },
  };
  if (HAS_WS)
    wrapped.WebSocket = class extends WebSocket {
      constructor(...args) {
        counts.sockets++;
        super(...args);
      }
    };
  if (options.EventSource)
    wrapped.EventSource = class extends options.EventSource {
      constructor(...args) {
        counts.streams++;
        super(...args);
      }
    };
  return { counts, options: { ...options, ...wrapped } };
}

for (const { name, transport, options } of VARIANTS) {
  describe(name, () => {
    test('sub.ready resolves once the server confirmed the topic, and rejects for a forbidden one', async () => {
      const topic = uniqueTopic('ok');
      const token = mint({ subscribe: ['ok.>'] });
      const h = new Herald(server.url, { ...FAST, token, ...options });
      h.on('error', () => {});
      const got = collector();
      const sub = h.subscribe(topic, got.handler);
      try {
        assert.equal(await withTimeout(sub.ready, WAIT_MS, 'ready'), undefined);
        // Live: what is published now arrives.
        await publish(server, topic, [1]);
        await until(() => got.seqs.length >= 1, WAIT_MS, 'the event published once ready');
        assert.deepEqual(got.seqs, [1]);
        // A topic already live: ready at once.
        await withTimeout(h.subscribe(topic, () => {}).ready, 1000, 'a second subscription to a live topic');
        const refused = h.subscribe(uniqueTopic('no'), () => {});
        const err = await rejection(refused.ready, 'the forbidden subscription');
        assert.ok(err instanceof HeraldError, String(err));
        assert.equal(err.code, 'forbidden');
        assert.equal(refused.active, false);
        await withTimeout(sub.ready, 1000, 'the allowed one stays ready');
      } finally {
        h.close();
      }
    });

    test('state listeners get the previous state, the reason and when the retry comes', async () => {
      const topic = uniqueTopic();
      const proxy = await startProxy(server.port);
      const h = new Herald(proxy.url, { ...FAST, token: server.token, ...options });
      const changes = [];
      h.on('state', (state, change) => changes.push({ state, ...change }));
      h.subscribe(topic, () => {});
      try {
        await until(() => h.state === 'open', WAIT_MS, 'open');
        proxy.cut();
        await until(() => changes.length >= 3 && h.state === 'open', WAIT_MS, () => `open again: ${JSON.stringify(changes)}`);
      } finally {
        h.close();
        await proxy.close();
      }
      assert.deepEqual(changes[0], { state: 'open', previous: 'connecting', reason: 'connect', retryIn: undefined });
      const lost = changes[1];
      assert.equal(lost.state, 'reconnecting');
      assert.equal(lost.previous, 'open');
      assert.match(lost.reason, transport === 'websocket' ? /^closed:\d{4}$/ : /^(network|timeout)$/);
      assert.ok(Number.isInteger(lost.retryIn) && lost.retryIn >= 0 && lost.retryIn <= FAST.maxDelay, `retryIn ${lost.retryIn}`);
      assert.deepEqual(changes[2], { state: 'open', previous: 'reconnecting', reason: 'connect', retryIn: undefined });
      assert.deepEqual(changes.at(-1), { state: 'closed', previous: 'open', reason: 'close()', retryIn: undefined });
    });

    test('the frame event shows what goes out and every frame, message or answer that comes in', async () => {
      const topic = uniqueTopic();
      await publish(server, topic, [1]);
      const h = new Herald(server.url, { ...FAST, token: server.token, ...options });
      const frames = [];
      const off = h.on('frame', (frame) => frames.push(frame));
      const got = collector();
      h.subscribe(topic, got.handler, { since: 0 });
      try {
        await until(() => got.seqs.length >= 1, WAIT_MS, 'the event');
        off();
        const count = frames.length;
        await publish(server, topic, [2]);
        await until(() => got.seqs.length >= 2, WAIT_MS, 'the second event');
        assert.equal(frames.length, count, 'a removed listener gets nothing');
      } finally {
        h.close();
      }
      assert.ok(frames.every((f) => f.transport === transport && ['in', 'out'].includes(f.direction)), JSON.stringify(frames));
      const incoming = frames.filter((f) => f.direction === 'in').map((f) => f.data);
      const outgoing = frames.filter((f) => f.direction === 'out').map((f) => f.data);
      if (transport === 'websocket') {
        assert.ok(incoming.some((d) => d.op === 'event' && d.topic === topic && d.seq === 1), JSON.stringify(incoming));
        assert.ok(incoming.some((d) => d.op === 'subscribed'));
        assert.ok(outgoing.some((d) => d.op === 'subscribe' && d.topics.includes(topic)), JSON.stringify(outgoing));
      } else if (transport === 'sse') {
        assert.ok(incoming.some((d) => d.event === 'message' && JSON.parse(d.data).seq === 1), JSON.stringify(incoming));
        assert.ok(incoming.some((d) => d.event === 'subscribed' && d.id));
        assert.ok(outgoing.some((d) => d.startsWith('GET /v1/sse?') && d.includes(encodeURIComponent(topic))), JSON.stringify(outgoing));
      } else {
        assert.ok(incoming.some((d) => d.events.some((e) => e.topic === topic && e.seq === 1)), JSON.stringify(incoming));
        assert.ok(outgoing.some((d) => d.startsWith('GET /v1/poll?')));
      }
    });

    test('getToken() returning null logs out: closed, nothing more asked for', async () => {
      const topic = uniqueTopic();
      let loggedOut = false;
      let calls = 0;
      const { counts, options: wrapped } = counted(options);
      const errors = [];
      const changes = [];
      // Two seconds: the client asks for the next token after one.
      const h = new Herald(server.url, {
        ...FAST,
        ...wrapped,
        getToken: () => {
          calls++;
          return loggedOut ? null : mint({ ttlSecs: 2 });
        },
      });
      h.on('error', (e) => errors.push(e));
      h.on('state', (state, change) => changes.push({ state, ...change }));
      const live = h.subscribe(topic, () => {});
      await withTimeout(live.ready, WAIT_MS, 'ready');
      loggedOut = true;
      await until(() => h.state === 'closed', WAIT_MS, 'closed once getToken() says logged out');
      assert.deepEqual(changes.at(-1), { state: 'closed', previous: 'open', reason: 'logged_out', retryIn: undefined });
      assert.equal(live.active, false);
      assert.deepEqual(errors, [], 'logging out is not an error');
      const asked = { calls, ...counts };
      // A client that kept going would refresh, reconnect or poll within this window.
      const deadline = Date.now() + QUIET_MS;
      await until(() => Date.now() > deadline, QUIET_MS + 1000, 'the window');
      assert.deepEqual({ calls, ...counts }, asked, 'nothing asked for after logging out');
      assert.throws(() => h.subscribe(topic, () => {}), /closed/);
    });
  });
}

test('getToken() returning null at once: ready rejects, no request, no timer left', async () => {
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  for (const { name, options } of VARIANTS) {
    const before = timers();
    let calls = 0;
    const { counts, options: wrapped } = counted(options);
    const changes = [];
    const h = new Herald(server.url, {
      ...FAST,
      ...wrapped,
      getToken: () => {
        calls++;
        return null;
      },
    });
    h.on('state', (state, change) => changes.push({ state, ...change }));
    const sub = h.subscribe(uniqueTopic(), () => {});
    const ignored = h.subscribe(uniqueTopic(), () => {});
    const err = await rejection(sub.ready, `${name}: ready`);
    assert.ok(err instanceof HeraldError && err.code === 'logged_out', `${name}: ${err}`);
    await assert.rejects(ignored.ready, { code: 'logged_out' });
    assert.equal(h.state, 'closed', name);
    assert.deepEqual(changes, [{ state: 'closed', previous: 'connecting', reason: 'logged_out', retryIn: undefined }], name);
    assert.deepEqual({ calls, ...counts }, { calls: 1, fetch: 0, sockets: 0, streams: 0 }, `${name}: one getToken() call, no request`);
    await settle();
    assert.equal(timers(), before, `${name}: no timer left`);
  }
});

test('sub.ready rejects when the subscription ends before it is live, and ignoring it is safe', async () => {
  const h = new Herald(server.url, { ...FAST, token: server.token });
  const dropped = h.subscribe(uniqueTopic(), () => {});
  dropped.unsubscribe();
  assert.equal((await rejection(dropped.ready, 'unsubscribed')).code, 'unsubscribed');
  const pending = h.subscribe(uniqueTopic(), () => {});
  h.subscribe(uniqueTopic(), () => {}); // its ready is never looked at
  h.close();
  assert.equal((await rejection(pending.ready, 'closed')).code, 'closed');
  await settle();
  assert.deepEqual(unhandled, [], 'no unhandled rejection');
});

test('debug and logger: lifecycle lines with the [herald] prefix, warnings to the logger', async () => {
  const lines = [];
  const warnings = [];
  const logger = { debug: (l) => lines.push(l), info: () => {}, warn: (l) => warnings.push(l), error: () => {} };
  const transports = HAS_WS ? ['websocket', 'sse'] : ['sse', 'poll'];
  // The first transport is blocked by a proxy: a fallback, then a cut.
  const proxy = await startProxy(server.port, { block: HAS_WS ? WS_UPGRADE : SSE_REQUEST });
  let tokens = 0;
  const h = new Herald(proxy.url, {
    ...FAST,
    transports,
    logger,
    getToken: () => (tokens++, mint({ subscribe: ['ok.>'] })),
  });
  h.subscribe(uniqueTopic('ok'), () => {});
  try {
    await until(() => h.state === 'open', WAIT_MS, 'open');
    proxy.cut();
    await until(() => lines.some((l) => /lost \(/.test(l)) && h.state === 'open', WAIT_MS, () => `open again: ${lines.join('\n')}`);
    h.subscribe(uniqueTopic('no'), () => {}); // refused, and no error listener
    await until(() => warnings.length > 0, WAIT_MS, 'a warning');
  } finally {
    h.close();
    await proxy.close();
  }
  const text = lines.join('\n');
  assert.ok(lines.every((l) => typeof l === 'string' && l.startsWith('[herald] ')), text);
  const [first, second] = transports;
  for (const expected of [
    new RegExp(`${first}: connecting to ${proxy.url}`),
    new RegExp(`${first} failed \\(\\w+\\): falling back to ${second}`),
    new RegExp(`${second}: open`),
    /token refreshed/,
    new RegExp(`${second} lost \\((network|timeout)\\): retry in \\d+ ms`),
    /state open -> reconnecting \((network|timeout)\)/,
    /state reconnecting -> open \(connect\)/,
    /state \w+ -> closed \(close\(\)\)/,
  ])
    assert.match(text, expected);
  assert.ok(tokens >= 1);
  assert.match(warnings[0], /^\[herald\] forbidden: /);

  // debug: true without a logger writes to console.debug; debug: false keeps a logger's lines off.
  const original = console.debug;
  const consoleLines = [];
  console.debug = (l) => consoleLines.push(l);
  const quiet = [];
  try {
    const loud = new Herald(server.url, { ...FAST, debug: true, token: server.token, transports: [transports[1]] });
    const silent = new Herald(server.url, { ...FAST, debug: false, logger: { ...logger, debug: (l) => quiet.push(l) }, token: server.token, transports: [transports[1]] });
    loud.subscribe(uniqueTopic(), () => {});
    silent.subscribe(uniqueTopic(), () => {});
    await until(() => loud.state === 'open' && silent.state === 'open', WAIT_MS, 'both open');
    loud.close();
    silent.close();
  } finally {
    console.debug = original;
  }
  assert.ok(consoleLines.some((l) => /^\[herald\] .*: open$/.test(l)), consoleLines.join('\n'));
  assert.deepEqual(quiet, []);
});

describe('a server that does not speak the client protocol version', () => {
  for (const { name, options } of VARIANTS) {
    test(`${name}: unsupported_protocol, then closed without retrying`, async () => {
      // The real server, asked for a version it does not speak: the proxy rewrites `protocol=1`.
      const proxy = await startProxy(server.port, { rewrite: [/protocol=1\b/, 'protocol=7'] });
      const h = new Herald(proxy.url, { ...FAST, token: server.token, ...options });
      const errors = [];
      const changes = [];
      h.on('error', (e) => errors.push(e));
      h.on('state', (state, change) => changes.push({ state, ...change }));
      const sub = h.subscribe(uniqueTopic(), () => {});
      try {
        const err = await rejection(sub.ready, 'ready');
        assert.equal(err.code, 'unsupported_protocol', String(err));
        assert.equal(h.state, 'closed');
        assert.deepEqual(changes.at(-1), { state: 'closed', previous: 'connecting', reason: 'unsupported_protocol', retryIn: undefined });
        assert.deepEqual(
          errors.map((e) => e.code),
          ['unsupported_protocol'],
        );
        assert.match(errors[0].message, /protocol/);
        const connections = proxy.connections;
        const deadline = Date.now() + QUIET_MS;
        await until(() => Date.now() > deadline, QUIET_MS + 1000, 'the window');
        assert.equal(proxy.connections, connections, 'no reconnect loop');
      } finally {
        h.close();
        await proxy.close();
      }
    });
  }
});
