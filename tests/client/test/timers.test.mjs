// Timers with computed delays are clamped to what setTimeout can hold: a
// token that lives longer than 2^31-1 ms (24.8 days) is refreshed near its
// expiry, not at once and again and again.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { collector, mint, publish, startHerald, uniqueTopic, until } from './helpers.mjs';
import { TestEventSource } from './eventsource.mjs';

delete globalThis.BroadcastChannel;
const { Herald } = await import('../../../services/herald/static/client.js');

const HAS_WS = typeof globalThis.WebSocket === 'function';
const VARIANTS = [
  ...(HAS_WS ? ['websocket'] : []).concat(['sse', 'poll']).map((t) => ({ name: t, options: { transports: [t] } })),
  { name: 'sse over EventSource', options: { transports: ['sse'], EventSource: TestEventSource } },
];
const THIRTY_DAYS_SECS = 30 * 24 * 3600;
const WAIT_MS = 15_000;
/** How long a client may run without asking for another token. */
const QUIET_MS = 1000;

let server;
before(async () => {
  server = await startHerald();
});
after(() => server?.stop());

for (const { name, options } of VARIANTS) {
  test(`${name}: a 30-day token is asked for once, not in a loop`, async () => {
    const topic = uniqueTopic();
    let calls = 0;
    const streams = TestEventSource.urls.length;
    const h = new Herald(server.url, {
      minDelay: 50,
      ...options,
      getToken: () => {
        calls++;
        return mint({ ttlSecs: THIRTY_DAYS_SECS });
      },
    });
    const got = collector();
    h.subscribe(topic, got.handler, { since: 0 });
    try {
      await publish(server, topic, [1]);
      await until(() => got.seqs.length >= 1, WAIT_MS, () => `the event, got ${got.seqs}`);
      // A window in which a refresh loop shows itself (it made over 700 calls a second).
      const deadline = Date.now() + QUIET_MS;
      await until(() => Date.now() > deadline || calls > 1, QUIET_MS + 1000, 'the window');
      assert.equal(calls, 1, `getToken called ${calls} times`);
      if (options.EventSource) assert.equal(TestEventSource.urls.length - streams, 1, 'one stream');
      await publish(server, topic, [2]);
      await until(() => got.seqs.length >= 2, WAIT_MS, () => `the second event, got ${got.seqs}`);
      assert.deepEqual(got.seqs, [1, 2]);
    } finally {
      h.close();
    }
  });
}
