// Acknowledgments in the client (`ack: 'auto'`): a device acknowledges the
// events its handlers processed; a second device of the same subscriber,
// with no position of its own, resumes right after them, on each transport.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { collector, mint, publish, range, startHerald, uniqueTopic, until } from './helpers.mjs';

delete globalThis.BroadcastChannel;
const { Herald } = await import('../../../services/herald/static/client.js');

const HAS_WS = typeof globalThis.WebSocket === 'function';
const TRANSPORTS = HAS_WS ? ['websocket', 'sse', 'poll'] : ['sse', 'poll'];
const FAST = { minDelay: 50, maxDelay: 500, openTimeout: 3000, pollWait: 2 };
const WAIT_MS = 15_000;

let server;
before(async () => {
  server = await startHerald({ env: { HERALD_ACK_FLUSH_MS: '50' } });
});
after(() => server?.stop());

/** The acknowledged seq of `sub` on `topic`, from the receipts. */
async function acked(topic, sub) {
  const res = await fetch(`${server.url}/v1/acks?topic=${encodeURIComponent(topic)}&sub=${encodeURIComponent(sub)}`, {
    headers: { Authorization: `Bearer ${server.token}` },
  });
  assert.equal(res.status, 200);
  return (await res.json()).acks[0]?.seq;
}

async function untilAcked(topic, sub, seq) {
  let now;
  const deadline = Date.now() + WAIT_MS;
  while ((now = await acked(topic, sub)) !== seq) {
    if (Date.now() > deadline) throw new Error(`${sub} not acknowledged at ${topic}:${seq} (now ${now})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

for (const transport of TRANSPORTS) {
  describe(transport, () => {
    test("ack: 'auto' acknowledges handled events and a second device resumes after them", async () => {
      const topic = uniqueTopic('acks');
      const sub = `device-${transport}`;
      const token = mint({ sub, subscribe: ['>'] });
      const options = { ...FAST, token, transports: [transport], ack: 'auto' };
      await publish(server, topic, range(1, 5));

      const first = new Herald(server.url, options);
      const one = collector();
      first.subscribe(topic, one.handler, { since: 0 });
      try {
        await until(() => one.seqs.length >= 5, WAIT_MS, () => `5 events, got ${one.seqs}`);
        await untilAcked(topic, sub, 5);
      } finally {
        first.close();
      }

      await publish(server, topic, range(6, 10));
      // A second device: no `since`, nothing persisted.
      const second = new Herald(server.url, options);
      const two = collector();
      second.subscribe(topic, two.handler);
      try {
        await until(() => two.seqs.length >= 5, WAIT_MS, () => `5 events, got ${two.seqs}`);
        assert.deepEqual(two.seqs, range(6, 10));
        assert.deepEqual(two.problems, []);
        await untilAcked(topic, sub, 10);
      } finally {
        second.close();
      }
    });
  });
}

test("ack: 'manual' acknowledges only what ack() is given", async () => {
  const topic = uniqueTopic('acks');
  const sub = 'manual';
  const h = new Herald(server.url, { ...FAST, token: mint({ sub, subscribe: ['>'] }), transports: ['poll'], ack: 'manual' });
  await publish(server, topic, range(1, 4));
  const got = [];
  h.subscribe(topic, (e) => got.push(e), { since: 0 });
  try {
    await until(() => got.length >= 4, WAIT_MS, () => `4 events, got ${got.length}`);
    assert.equal(await acked(topic, sub), undefined);
    h.ack(got[1]);
    await untilAcked(topic, sub, 2);
  } finally {
    h.close();
  }
});
