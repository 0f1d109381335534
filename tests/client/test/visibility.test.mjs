// Page life events, with `document` and `window` stood in by EventTargets:
// long polling pauses while the tab is hidden and resumes at once when it is
// visible again; the `online` event reconnects at once instead of waiting
// out the backoff.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { collector, publish, range, startHerald, startProxy, uniqueTopic, until } from './helpers.mjs';

const page = Object.assign(new EventTarget(), { visibilityState: 'visible' });
globalThis.document = page;
globalThis.window = new EventTarget();
delete globalThis.BroadcastChannel;
const { Herald } = await import('../../../services/herald/static/client.js');

const WAIT_MS = 15_000;
let server;
before(async () => {
  server = await startHerald();
});
after(() => server?.stop());

function setVisibility(state) {
  page.visibilityState = state;
  page.dispatchEvent(new Event('visibilitychange'));
}

test('long polling pauses while the tab is hidden and resumes when it is visible', async () => {
  const topic = uniqueTopic();
  const h = new Herald(server.url, { minDelay: 50, transports: ['poll'], pollWait: 1, token: server.token });
  const got = collector();
  h.subscribe(topic, got.handler, { since: 0 });
  try {
    await publish(server, topic, [1]);
    await until(() => got.seqs.length >= 1, WAIT_MS, 'the first event');
    setVisibility('hidden');
    // A poll already under way still answers; the next one is not made.
    await publish(server, topic, [2]);
    await until(() => got.seqs.length >= 2, WAIT_MS, 'the event of the poll under way');
    await publish(server, topic, [3, 4]);
    await new Promise((r) => setTimeout(r, 2500));
    assert.deepEqual(got.seqs, [1, 2], 'nothing is polled while hidden');
    setVisibility('visible');
    await until(() => got.seqs.length >= 4, 2000, () => `the events published while hidden, got ${got.seqs}`);
    assert.deepEqual(got.seqs, range(1, 4));
  } finally {
    h.close();
    setVisibility('visible');
  }
});

test('with pauseWhenHidden false, polling goes on while hidden', async () => {
  const topic = uniqueTopic();
  const h = new Herald(server.url, { minDelay: 50, transports: ['poll'], pollWait: 1, pauseWhenHidden: false, token: server.token });
  const got = collector();
  h.subscribe(topic, got.handler, { since: 0 });
  try {
    await until(() => h.state === 'open', WAIT_MS, 'open');
    setVisibility('hidden');
    await publish(server, topic, range(1, 3));
    await until(() => got.seqs.length >= 3, WAIT_MS, () => `3 events while hidden, got ${got.seqs}`);
  } finally {
    h.close();
    setVisibility('visible');
  }
});

test('the online event reconnects at once instead of waiting out the backoff', async () => {
  const random = Math.random;
  Math.random = () => 0.999; // every backoff at its longest: minutes
  const topic = uniqueTopic();
  const proxy = await startProxy(server.port);
  const h = new Herald(proxy.url, { minDelay: 300_000, maxDelay: 600_000, transports: ['websocket', 'sse'], token: server.token });
  const states = [];
  h.on('state', (s) => states.push(s));
  const got = collector();
  h.subscribe(topic, got.handler, { since: 0 });
  try {
    await until(() => h.state === 'open', WAIT_MS, 'open');
    proxy.cut();
    await until(() => h.state === 'reconnecting', WAIT_MS, 'reconnecting');
    await publish(server, topic, [1, 2]);
    window.dispatchEvent(new Event('online'));
    await until(() => got.seqs.length >= 2, 5000, () => `2 events, got ${got.seqs}; states ${states}`);
    assert.equal(h.state, 'open');
  } finally {
    Math.random = random;
    h.close();
    await proxy.close();
  }
});
