// What the client makes of the network: `navigator.onLine === false` does
// not stop it (it is wrong behind some VPNs and in WebViews), a WebSocket
// that is only slow is not remembered as blocked, and after a fallback the
// client moves back to a WebSocket once one gets through.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { collector, publish, range, startHerald, startProxy, uniqueTopic, until, WS_UPGRADE } from './helpers.mjs';

delete globalThis.BroadcastChannel;
const { Herald } = await import('../../../services/herald/static/client.js');

const HAS_WS = typeof globalThis.WebSocket === 'function';
const FAST = { minDelay: 50, maxDelay: 300, openTimeout: 3000, pollWait: 2 };
const WAIT_MS = 15_000;

let server;
before(async () => {
  server = await startHerald({ env: { HERALD_HEARTBEAT_SECS: '2' } });
});
after(() => server?.stop());

test('with navigator.onLine false the client connects, and reconnects after a cut', async () => {
  const had = Object.getOwnPropertyDescriptor(globalThis, 'navigator');
  Object.defineProperty(globalThis, 'navigator', { value: { onLine: false }, configurable: true, writable: true });
  const topic = uniqueTopic();
  const proxy = await startProxy(server.port);
  const h = new Herald(proxy.url, { ...FAST, token: server.token });
  const got = collector();
  h.subscribe(topic, got.handler, { since: 0 });
  try {
    await publish(server, topic, [1, 2]);
    await until(() => got.seqs.length >= 2, WAIT_MS, () => `2 events, state ${h.state}, got ${got.seqs}`);
    proxy.cut();
    await publish(server, topic, [3, 4]);
    await until(() => got.seqs.length >= 4, WAIT_MS, () => `4 events after the cut, state ${h.state}, got ${got.seqs}`);
    assert.deepEqual(got.seqs, range(1, 4));
    assert.deepEqual(got.problems, []);
  } finally {
    h.close();
    await proxy.close();
    if (had) Object.defineProperty(globalThis, 'navigator', had);
    else delete globalThis.navigator;
  }
});

test('a WebSocket that only timed out is not remembered as blocked; a refused one is', { skip: !HAS_WS && 'Node without WebSocket' }, async () => {
  const topic = uniqueTopic();
  await publish(server, topic, [1]);
  const run = async (proxy, expected) => {
    const h = new Herald(proxy.url, { ...FAST, openTimeout: 500, token: server.token, upgradeAfter: 60_000 });
    const got = collector();
    h.subscribe(topic, got.handler, { since: 0 });
    try {
      await until(() => got.seqs.length >= 1, WAIT_MS, () => `the event, got ${got.seqs}`);
      assert.equal(h.transport, expected);
    } finally {
      h.close();
    }
  };
  // A slow path: the upgrade is never answered, the client falls back to SSE...
  const slow = await startProxy(server.port, { block: WS_UPGRADE, mode: 'swallow' });
  // ...refused outright: a proxy that blocks WebSockets.
  const refused = await startProxy(server.port, { block: WS_UPGRADE, mode: 'refuse' });
  try {
    await run(slow, 'sse');
    await run(refused, 'sse');
    // The network is fine again: the next client of the slow origin tries the WebSocket first.
    slow.block = refused.block = null;
    await run(slow, 'websocket');
    // The origin that refused stays on SSE for the session (and probes later).
    await run(refused, 'sse');
  } finally {
    await slow.close();
    await refused.close();
  }
});

test('after falling back to SSE, the client moves back to a WebSocket once one gets through, losing nothing', { skip: !HAS_WS && 'Node without WebSocket' }, async () => {
  const topic = uniqueTopic();
  const proxy = await startProxy(server.port, { block: WS_UPGRADE, mode: 'refuse' });
  const h = new Herald(proxy.url, { ...FAST, token: server.token, upgradeAfter: 200 });
  const got = collector();
  h.subscribe(topic, got.handler, { since: 0 });
  try {
    await publish(server, topic, range(1, 3));
    await until(() => got.seqs.length >= 3, WAIT_MS, () => `3 events, got ${got.seqs}`);
    assert.equal(h.transport, 'sse');
    proxy.block = null;
    await until(() => h.transport === 'websocket' && h.state === 'open', WAIT_MS, () => `back on a WebSocket: ${h.transport} ${h.state}`);
    await publish(server, topic, range(4, 6));
    await until(() => got.seqs.length >= 6, WAIT_MS, () => `6 events, got ${got.seqs}`);
    assert.deepEqual(got.seqs, range(1, 6));
    assert.deepEqual(got.problems, []);
  } finally {
    h.close();
    await proxy.close();
  }
});
