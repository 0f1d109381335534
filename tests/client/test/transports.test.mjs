// Each transport of the client against a real herald server, under Node
// (run with --experimental-websocket so that Node 20 has a WebSocket):
// delivery in order, connections cut mid-stream, a server restarted on the
// same store, tokens that expire, and the fallback from a blocked WebSocket
// (and a blocked SSE) to the next transport.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  collector,
  mint,
  publish,
  range,
  revoke,
  SSE_REQUEST,
  startHerald,
  startProxy,
  uniqueTopic,
  until,
  WS_UPGRADE,
} from './helpers.mjs';
import { TestEventSource } from './eventsource.mjs';

delete globalThis.BroadcastChannel;
const { Herald } = await import('../../../services/herald/static/client.js');

const HAS_WS = typeof globalThis.WebSocket === 'function';
const TRANSPORTS = HAS_WS ? ['websocket', 'sse', 'poll'] : ['sse', 'poll'];
// Each transport, and SSE a second time through an EventSource (what browsers use: a ticket per stream).
const VARIANTS = [
  ...TRANSPORTS.map((transport) => ({ name: transport, transport, options: { transports: [transport] } })),
  { name: 'sse over EventSource', transport: 'sse', options: { transports: ['sse'], EventSource: TestEventSource } },
];
const FAST = { minDelay: 50, maxDelay: 500, openTimeout: 3000, pollWait: 2 };
const WAIT_MS = 15_000;

let server;
before(async () => {
  server = await startHerald({ env: { HERALD_HEARTBEAT_SECS: '2' } });
});
after(() => server?.stop());

for (const { name, transport, options } of VARIANTS) {
  describe(name, () => {
    test('delivers retained then live events once each, in order', async () => {
      const topic = uniqueTopic();
      const other = uniqueTopic();
      await publish(server, topic, range(1, 10));
      const h = new Herald(server.url, { ...FAST, token: server.token, ...options });
      const got = collector();
      const quiet = collector();
      h.subscribe(topic, got.handler, { since: 0 });
      h.subscribe(other, quiet.handler);
      try {
        await until(() => got.seqs.length >= 10, WAIT_MS, () => `10 events, got ${got.seqs}`);
        assert.equal(h.transport, transport);
        await publish(server, topic, range(11, 60));
        await publish(server, other, [1, 2]);
        await until(() => got.seqs.length >= 60 && quiet.seqs.length >= 2, WAIT_MS, () => `60 + 2 events, got ${got.seqs.length} + ${quiet.seqs.length}`);
        assert.deepEqual(got.seqs, range(1, 60));
        assert.deepEqual(quiet.seqs, [1, 2]);
        assert.deepEqual([...got.problems, ...quiet.problems], []);
      } finally {
        h.close();
      }
    });

    test('subscriptions added on an open connection, one of them from an older position, each get every event once', async () => {
      const a = uniqueTopic();
      const b = uniqueTopic();
      await publish(server, a, range(1, 5));
      await publish(server, b, range(1, 3));
      const h = new Herald(server.url, { ...FAST, token: server.token, ...options });
      const live = collector();
      const first = h.subscribe(a, live.handler);
      try {
        await until(() => h.state === 'open', WAIT_MS, 'open');
        await publish(server, a, range(6, 8));
        await until(() => live.seqs.length >= 3, WAIT_MS, () => `3 live events, got ${live.seqs}`);
        // A second topic, from the start; and the first topic again from seq 2, behind the connection.
        const other = collector();
        h.subscribe(b, other.handler, { since: 0 });
        const late = collector();
        h.subscribe(a, late.handler, { since: 2 });
        await until(() => other.seqs.length >= 3 && late.seqs.length >= 6, WAIT_MS, () => `3 + 6 events, got ${other.seqs} + ${late.seqs}`);
        first.unsubscribe();
        await publish(server, a, range(9, 10));
        await until(() => late.seqs.length >= 8, WAIT_MS, () => `8 events, got ${late.seqs}`);
        assert.deepEqual(live.seqs, [6, 7, 8], 'the first subscription saw the live events once, and nothing after it left');
        assert.deepEqual(late.seqs, range(3, 10));
        assert.deepEqual(other.seqs, [1, 2, 3]);
        assert.deepEqual([...live.problems, ...late.problems, ...other.problems], []);
      } finally {
        h.close();
      }
    });

    test('connections cut mid-stream lose and repeat nothing', async () => {
      const topic = uniqueTopic();
      const proxy = await startProxy(server.port);
      const h = new Herald(proxy.url, { ...FAST, token: server.token, ...options });
      const states = [];
      h.on('state', (s) => states.push(s));
      const got = collector();
      h.subscribe(topic, got.handler, { since: 0 });
      try {
        await until(() => h.state === 'open', WAIT_MS, 'open');
        let published = 0;
        for (let round = 0; round < 5; round++) {
          await publish(server, topic, range(1, 20));
          published += 20;
          proxy.cut();
          await publish(server, topic, range(1, 5));
          published += 5;
        }
        await until(() => got.seqs.length >= published, WAIT_MS, () => `${published} events, got ${got.seqs.length}: ${got.problems}`);
        await new Promise((r) => setTimeout(r, 300));
        assert.deepEqual(got.seqs, range(1, published));
        assert.deepEqual(got.problems, []);
        assert.ok(states.includes('reconnecting'), `reconnected: ${states}`);
        assert.equal(h.transport, transport);
        if (options.EventSource) {
          // Every stream opened with a ticket of its own, never with the token.
          const urls = TestEventSource.urls.filter((u) => u.startsWith(proxy.url));
          const tickets = urls.map((u) => new URL(u).searchParams.get('ticket'));
          assert.ok(urls.length >= 2, `a new stream after a cut: ${urls.length}`);
          assert.ok(tickets.every(Boolean), 'each stream has a ticket');
          assert.equal(new Set(tickets).size, tickets.length, 'tickets are not reused');
          assert.ok(urls.every((u) => !u.includes(server.token)), 'the token stays out of the URL');
        }
      } finally {
        h.close();
        await proxy.close();
      }
    });

    test('a connection that goes silent is detected from the wall clock and replaced', async () => {
      const topic = uniqueTopic();
      const proxy = await startProxy(server.port);
      // Deadlines scaled down: heartbeat 1 s, a ping unanswered for 1 s.
      const h = new Herald(proxy.url, { ...FAST, heartbeat: 1000, pongTimeout: 1000, ...options, token: server.token });
      const states = [];
      h.on('state', (s) => {
        states.push(s);
        // The path stays dead until the client has noticed.
        if (s === 'reconnecting') proxy.thaw();
      });
      const got = collector();
      h.subscribe(topic, got.handler, { since: 0 });
      try {
        await publish(server, topic, [1]);
        await until(() => got.seqs.length >= 1, WAIT_MS, 'the first event');
        proxy.freeze();
        await publish(server, topic, [2, 3]);
        await until(() => got.seqs.length >= 3, WAIT_MS, () => `3 events, got ${got.seqs}; states ${states}`);
        assert.deepEqual(got.seqs, [1, 2, 3]);
        assert.ok(states.includes('reconnecting'), `${states}`);
      } finally {
        h.close();
        await proxy.close();
      }
    });

    test('a server restarted on the same store is resumed from the cursor', async () => {
      const restarted = await startHerald();
      const topic = uniqueTopic();
      const proxy = await startProxy(restarted.port);
      const h = new Herald(proxy.url, { ...FAST, token: restarted.token, ...options });
      const got = collector();
      h.subscribe(topic, got.handler, { since: 0 });
      let next;
      try {
        await publish(restarted, topic, range(1, 10));
        await until(() => got.seqs.length >= 10, WAIT_MS, () => `10 events, got ${got.seqs}`);
        await restarted.stop();
        next = await startHerald({ db: restarted.db });
        proxy.targetPort = next.port;
        proxy.cut();
        await publish(next, topic, range(11, 25));
        await until(() => got.seqs.length >= 25, WAIT_MS, () => `25 events, got ${got.seqs}`);
        assert.deepEqual(got.seqs, range(1, 25));
      } finally {
        h.close();
        await proxy.close();
        await next?.stop();
        await restarted.stop();
      }
    });

    test('a draining server sends its clients to another without loss', async () => {
      const first = await startHerald({ env: { HERALD_DRAIN_SECS: '1' } });
      const topic = uniqueTopic();
      const proxy = await startProxy(first.port);
      const h = new Herald(proxy.url, { ...FAST, token: first.token, ...options });
      const states = [];
      h.on('state', (s) => states.push(s));
      const got = collector();
      h.subscribe(topic, got.handler, { since: 0 });
      let second;
      try {
        await publish(first, topic, range(1, 10));
        await until(() => got.seqs.length >= 10, WAIT_MS, () => `10 events, got ${got.seqs}`);
        second = await startHerald({ db: first.db });
        proxy.targetPort = second.port;
        first.child.kill('SIGTERM');
        await until(() => first.child.exitCode !== null, WAIT_MS, 'the first server drains and exits');
        assert.equal(first.child.exitCode, 0);
        await publish(second, topic, range(11, 20));
        await until(() => got.seqs.length >= 20, WAIT_MS, () => `20 events, got ${got.seqs}`);
        assert.deepEqual(got.seqs, range(1, 20));
        assert.ok(states.includes('reconnecting'), `${states}`);
      } finally {
        h.close();
        await proxy.close();
        await second?.stop();
        await first.stop();
      }
    });

    test('a revoked token is replaced through getToken and the stream resumes without loss', async () => {
      const topic = uniqueTopic();
      const jtis = [];
      const h = new Herald(server.url, {
        ...FAST,
        ...options,
        getToken: () => {
          jtis.push(`jti-${topic}-${jtis.length}`);
          return mint({ subscribe: [topic], jti: jtis.at(-1) });
        },
      });
      const states = [];
      h.on('state', (s) => states.push(s));
      const got = collector();
      h.subscribe(topic, got.handler, { since: 0 });
      try {
        await publish(server, topic, range(1, 5));
        await until(() => got.seqs.length >= 5, WAIT_MS, () => `5 events, got ${got.seqs}`);
        await revoke(server, jtis[0]);
        await publish(server, topic, range(6, 10));
        await until(() => got.seqs.length >= 10 && jtis.length >= 2, WAIT_MS, () => `10 events and a new token, got ${got.seqs}, ${jtis.length} tokens`);
        assert.deepEqual(got.seqs, range(1, 10));
        assert.deepEqual(got.problems, []);
      } finally {
        h.close();
      }
    });

    test('tokens that expire are renewed with getToken and the stream goes on', async () => {
      const topic = uniqueTopic();
      let calls = 0;
      const h = new Herald(server.url, {
        ...FAST,
        ...options,
        getToken: () => (calls++, mint({ subscribe: [topic], ttlSecs: 3 })),
      });
      const errors = [];
      h.on('error', (e) => errors.push(e));
      const got = collector();
      h.subscribe(topic, got.handler, { since: 0 });
      try {
        // Nine seconds span three token lifetimes.
        for (let i = 1; i <= 9; i++) {
          await publish(server, topic, [i]);
          await new Promise((r) => setTimeout(r, 1000));
        }
        await until(() => got.seqs.length >= 9, WAIT_MS, () => `9 events, got ${got.seqs}`);
        assert.deepEqual(got.seqs, range(1, 9));
        assert.ok(calls >= 3, `getToken called ${calls} times`);
        assert.deepEqual(errors.map((e) => e.message), []);
      } finally {
        h.close();
      }
    });
  });
}

describe('fallback', () => {
  const cases = [
    ['a refused WebSocket upgrade falls back to SSE', WS_UPGRADE, 'refuse', 'sse'],
    ['a swallowed WebSocket upgrade falls back to SSE', WS_UPGRADE, 'swallow', 'sse'],
    ['a refused SSE request falls back to polling', SSE_REQUEST, 'refuse', 'poll'],
  ];
  for (const [name, block, mode, expected] of cases) {
    test(name, { skip: !HAS_WS && block === WS_UPGRADE && 'Node without WebSocket' }, async () => {
      const topic = uniqueTopic();
      const proxy = await startProxy(server.port, { block, mode });
      const transports = block === SSE_REQUEST ? ['sse', 'poll'] : ['websocket', 'sse', 'poll'];
      const h = new Herald(proxy.url, { ...FAST, openTimeout: 1000, token: server.token, transports });
      const got = collector();
      h.subscribe(topic, got.handler, { since: 0 });
      try {
        await publish(server, topic, range(1, 5));
        await until(() => got.seqs.length >= 5, WAIT_MS, () => `5 events, got ${got.seqs}`);
        assert.equal(h.transport, expected);
        assert.deepEqual(got.seqs, range(1, 5));
        // The transport that worked is remembered for the origin: a new client starts with it.
        const again = new Herald(proxy.url, { ...FAST, token: server.token, transports });
        const more = collector();
        again.subscribe(topic, more.handler, { since: 0 });
        try {
          await until(() => more.seqs.length >= 5, WAIT_MS, 'the second client');
          assert.equal(again.transport, expected);
        } finally {
          again.close();
        }
      } finally {
        h.close();
        await proxy.close();
      }
    });
  }
});

describe('reset', () => {
  let small;
  before(async () => {
    small = await startHerald({ env: { HERALD_RETENTION_EVENTS: '5', HERALD_PRUNE_INTERVAL_SECS: '1' } });
  });
  after(() => small?.stop());

  for (const { name, options } of VARIANTS) {
    test(`${name}: a reset of one topic reaches the app and the other topic is untouched`, async () => {
      const pruned = uniqueTopic();
      const kept = uniqueTopic();
      await publish(small, pruned, range(1, 20));
      await publish(small, kept, range(1, 3));
      // Wait for the pruner: the store answers a reset from seq 0.
      const deadline = Date.now() + WAIT_MS;
      for (;;) {
        const res = await fetch(`${small.url}/v1/poll?topic=${pruned}&since=${pruned}:0`, { headers: { Authorization: `Bearer ${small.token}` } });
        if ((await res.json()).resets.length) break;
        assert.ok(Date.now() < deadline, 'the store was pruned');
        await new Promise((r) => setTimeout(r, 100));
      }
      const h = new Herald(small.url, { ...FAST, token: small.token, ...options });
      const resets = [];
      const ownResets = [];
      h.on('reset', (r) => resets.push(r));
      const a = collector();
      const b = collector();
      h.subscribe(pruned, a.handler, { since: 0, onReset: (r) => ownResets.push(r) });
      h.subscribe(kept, b.handler, { since: 0 });
      try {
        await until(() => a.seqs.length >= 5 && b.seqs.length >= 3, WAIT_MS, () => `5 + 3 events, got ${a.seqs} + ${b.seqs}`);
        assert.deepEqual(resets, [{ topic: pruned, from: 16 }]);
        assert.deepEqual(ownResets, [{ topic: pruned, from: 16 }]);
        assert.deepEqual(a.seqs, range(16, 20));
        assert.deepEqual(b.seqs, [1, 2, 3]);
        await publish(small, pruned, [21]);
        await until(() => a.seqs.length >= 6, WAIT_MS, 'the next event');
        assert.deepEqual(a.seqs, range(16, 21));
      } finally {
        h.close();
      }
    });
  }
});
