// A live subscription (no `since`) keeps its place across a cut on every
// transport: the server tells each connection where each topic stands when
// it subscribes (WebSocket `subscribed`, SSE `event: subscribed`, the poll's
// cursor), and the client resumes from there.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { collector, publish, startHerald, startProxy, uniqueTopic, until } from './helpers.mjs';
import { TestEventSource } from './eventsource.mjs';

delete globalThis.BroadcastChannel;
const { Herald } = await import('../../../services/herald/static/client.js');

const HAS_WS = typeof globalThis.WebSocket === 'function';
const VARIANTS = [
  ...(HAS_WS ? ['websocket'] : []).concat(['sse', 'poll']).map((t) => ({ name: t, options: { transports: [t] } })),
  { name: 'sse over EventSource', options: { transports: ['sse'], EventSource: TestEventSource } },
  // Resuming from acknowledged positions (none here), the heads are not where a topic starts: the cursor is.
  ...(HAS_WS ? ['websocket'] : []).concat(['sse', 'poll']).map((t) => ({ name: `${t} with ack: 'manual'`, options: { transports: [t], ack: 'manual' } })),
];
const FAST = { minDelay: 50, maxDelay: 300, openTimeout: 3000, pollWait: 2 };
const WAIT_MS = 15_000;

let server;
before(async () => {
  server = await startHerald({ env: { HERALD_HEARTBEAT_SECS: '2' } });
});
after(() => server?.stop());

for (const { name, options } of VARIANTS) {
  describe(name, () => {
    test('a live subscription cut before its first event gets what was published while it was down, once each', async () => {
      const topic = uniqueTopic();
      const proxy = await startProxy(server.port);
      const h = new Herald(proxy.url, { ...FAST, token: server.token, ...options });
      h.on('error', () => {});
      const got = collector();
      const s = h.subscribe(topic, got.handler);
      try {
        await until(() => h.state === 'open' && s.seq === 0, WAIT_MS, () => `open at the topic's head: state ${h.state}, seq ${s.seq}`);
        // Down: every new connection is refused until the three events are in.
        proxy.block = /[^]/;
        proxy.cut();
        await until(() => h.state !== 'open', WAIT_MS, 'the client to notice the cut');
        await publish(server, topic, [1, 2, 3]);
        proxy.block = null;
        await until(() => h.state === 'open', WAIT_MS, 'open again');
        await publish(server, topic, [4]);
        await until(() => got.seqs.length >= 4, WAIT_MS, () => `4 events, got ${got.seqs}`);
        assert.deepEqual(got.seqs, [1, 2, 3, 4]);
        assert.deepEqual(got.problems, []);
      } finally {
        h.close();
        await proxy.close();
      }
    });
  });
}
