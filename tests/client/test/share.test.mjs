// Tab sharing, with several clients in one Node process standing for tabs:
// Node's BroadcastChannel is real; Node 20 has no Web Locks, so a small
// in-process implementation of navigator.locks (exclusive, queued, abortable)
// stands in for the browser's. The server must count one connection, every
// client must get every event once and in order, and closing the leader
// must hand over without loss.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { collector, mint, publish, range, startHerald, uniqueTopic, until, withTimeout } from './helpers.mjs';

/** Exclusive named locks granted in request order, like the Web Locks API. */
function webLocks() {
  const queues = new Map();
  return {
    request(name, options, callback) {
      const queue = queues.get(name) ?? [];
      queues.set(name, queue);
      return new Promise((resolve, reject) => {
        const entry = {
          async run() {
            try {
              resolve(await callback({ name, mode: 'exclusive' }));
            } catch (e) {
              reject(e);
            } finally {
              queue.shift();
              queue[0]?.run();
            }
          },
        };
        options.signal?.addEventListener('abort', () => {
          const i = queue.indexOf(entry);
          if (i > 0) {
            queue.splice(i, 1);
            reject(new DOMException('aborted', 'AbortError'));
          }
        });
        queue.push(entry);
        if (queue.length === 1) entry.run();
      });
    },
  };
}

Object.defineProperty(globalThis, 'navigator', { value: { locks: webLocks() }, configurable: true, writable: true });
assert.equal(typeof globalThis.BroadcastChannel, 'function');
const { Herald } = await import('../../../services/herald/static/client.js');

const FAST = { minDelay: 50, maxDelay: 500, openTimeout: 3000, pollWait: 2 };
const WAIT_MS = 15_000;
let server;
before(async () => {
  server = await startHerald();
});
after(() => server?.stop());

async function connectionsOf(topic) {
  const res = await fetch(`${server.url}/v1/admin/stats`, { headers: { Authorization: `Bearer ${server.token}` } });
  const stats = await res.json();
  return stats.topics.busiest.find((t) => t.topic === topic)?.connections ?? 0;
}

const transports = typeof WebSocket === 'function' ? ['websocket', 'sse', 'poll'] : ['sse', 'poll'];
for (const transport of transports) {
  test(`${transport}: three clients of one origin share one connection and survive the leader closing`, async () => {
    const topic = uniqueTopic();
    const share = `${transport}-${topic}`;
    const tabs = [0, 1, 2].map(() => new Herald(server.url, { ...FAST, share, token: server.token, transports: [transport] }));
    const got = tabs.map(() => collector());
    tabs.forEach((h, i) => h.subscribe(topic, got[i].handler, { since: 0 }));
    try {
      await publish(server, topic, range(1, 10));
      await until(() => got.every((g) => g.seqs.length >= 10), WAIT_MS, () => `10 events each: ${got.map((g) => g.seqs.length)}`);
      assert.deepEqual(
        tabs.map((h) => h.transport === transport),
        [true, false, false],
        'the first client leads; the others hold no transport',
      );
      assert.deepEqual(
        tabs.map((h) => h.state),
        ['open', 'open', 'open'],
        'followers mirror the leader',
      );
      if (transport !== 'poll') assert.equal(await connectionsOf(topic), 1, 'the server counts one connection');

      const handover = [];
      tabs[1].on('state', (s) => handover.push(s));
      tabs[0].close();
      await publish(server, topic, range(11, 30));
      await until(() => got.slice(1).every((g) => g.seqs.length >= 30), WAIT_MS, () => `30 events: ${got.map((g) => g.seqs.length)}`);
      await until(() => tabs[1].transport === transport, WAIT_MS, 'the next client leads');
      await until(() => tabs[1].state === 'open', WAIT_MS, 'the new leader is open');
      assert.deepEqual(handover, ['reconnecting', 'open'], 'the new leader reports its own connection');
      for (const g of got.slice(1)) {
        assert.deepEqual(g.seqs, range(1, 30));
        assert.deepEqual(g.problems, []);
      }
      assert.deepEqual(got[0].seqs, range(1, 10), 'a closed client gets nothing more');
    } finally {
      for (const h of tabs) h.close();
    }
  });
}

for (const transport of transports) {
  test(`${transport}: a tab that shares another tab's connection learns from it when a subscription is live or refused`, async () => {
    const allowed = uniqueTopic('ok');
    const token = mint({ subscribe: ['ok.>'] });
    const share = `ready-${transport}-${allowed}`;
    const tabs = [0, 1].map(() => new Herald(server.url, { ...FAST, share, token, transports: [transport] }));
    for (const h of tabs) h.on('error', () => {});
    try {
      const leading = tabs[0].subscribe(allowed, () => {});
      await withTimeout(leading.ready, WAIT_MS, "the leader's subscription");
      const got = collector();
      // A topic the leader already holds, then one it does not.
      const following = tabs[1].subscribe(allowed, got.handler);
      await withTimeout(following.ready, WAIT_MS, "the follower's subscription to a live topic");
      const other = uniqueTopic('ok');
      const second = tabs[1].subscribe(other, () => {});
      await withTimeout(second.ready, WAIT_MS, "the follower's subscription to a new topic");
      assert.equal(tabs[1].transport, undefined, 'the follower holds no connection');
      await publish(server, allowed, [1]);
      await until(() => got.seqs.length >= 1, WAIT_MS, 'the event, through the leader');
      const refused = tabs[1].subscribe(uniqueTopic('no'), () => {});
      await assert.rejects(withTimeout(refused.ready, WAIT_MS, 'the refusal'), { code: 'forbidden' });
    } finally {
      for (const h of tabs) h.close();
    }
  });
}

test('share: false keeps one connection per client', async () => {
  const topic = uniqueTopic();
  const tabs = [0, 1].map(() => new Herald(server.url, { ...FAST, share: false, token: server.token, transports: ['sse'] }));
  const got = tabs.map(() => collector());
  tabs.forEach((h, i) => h.subscribe(topic, got[i].handler, { since: 0 }));
  try {
    await publish(server, topic, range(1, 3));
    await until(() => got.every((g) => g.seqs.length >= 3), WAIT_MS, 'both clients get the events');
    assert.deepEqual(
      tabs.map((h) => h.transport),
      ['sse', 'sse'],
    );
    assert.equal(await connectionsOf(topic), 2);
  } finally {
    for (const h of tabs) h.close();
  }
});
