// The client under Node with the browser-only APIs absent (no window,
// document, storage, BroadcastChannel, navigator.locks, WebSocket,
// EventSource): it must still subscribe, fall back to what exists (SSE over
// fetch streaming, then polling) and resume, with tab sharing, visibility
// and storage doing nothing.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { collector, mint, publish, range, startHerald, uniqueTopic, until } from './helpers.mjs';

for (const name of ['WebSocket', 'EventSource', 'BroadcastChannel', 'navigator', 'window', 'document', 'localStorage', 'sessionStorage', 'location']) {
  delete globalThis[name];
  assert.equal(globalThis[name], undefined, `${name} is absent`);
}
const { Herald, default: DefaultHerald } = await import('../../../services/herald/static/client.js');

const FAST = { minDelay: 50, maxDelay: 500, openTimeout: 3000 };
let server;
before(async () => {
  server = await startHerald();
});
after(() => server?.stop());

test('Herald is the default export too', () => {
  assert.equal(DefaultHerald, Herald);
});

test('without WebSocket the client picks SSE and delivers every event in order', async () => {
  const topic = uniqueTopic();
  await publish(server, topic, range(1, 5));
  const h = new Herald(server.url, { token: server.token, ...FAST });
  const states = [];
  h.on('state', (s) => states.push(s));
  const got = collector();
  const s = h.subscribe(topic, got.handler, { since: 0 });
  try {
    await until(() => got.seqs.length >= 5, 10_000, () => `5 retained events, got ${got.seqs}`);
    assert.equal(h.transport, 'sse');
    await publish(server, topic, range(6, 30));
    await until(() => got.seqs.length >= 30, 10_000, () => `30 events, got ${got.seqs}`);
    assert.deepEqual(got.seqs, range(1, 30));
    assert.deepEqual(got.problems, []);
    assert.equal(s.seq, 30);
    assert.deepEqual(states, ['open']);
  } finally {
    h.close();
  }
  assert.equal(h.state, 'closed');
  assert.equal(s.active, false);
});

test('polling alone delivers live events from the position it starts at', async () => {
  const topic = uniqueTopic();
  await publish(server, topic, ['before']);
  const h = new Herald(server.url, { token: server.token, transports: ['poll'], pollWait: 2, ...FAST });
  const got = collector();
  h.subscribe(topic, got.handler);
  try {
    await until(() => h.state === 'open', 10_000, 'open');
    assert.equal(h.transport, 'poll');
    await publish(server, topic, range(2, 21));
    await until(() => got.seqs.length >= 20, 10_000, () => `20 events, got ${got.seqs}`);
    assert.deepEqual(got.seqs, range(2, 21), 'live only: the event before subscribing is not delivered');
  } finally {
    h.close();
  }
});

test('a getToken that throws or returns nothing surfaces an error and is retried until it works', async () => {
  const topic = uniqueTopic();
  await publish(server, topic, range(1, 3));
  let calls = 0;
  const token = mint({ subscribe: [topic] });
  const h = new Herald(server.url, {
    ...FAST,
    transports: ['sse', 'poll'],
    getToken: async () => {
      calls++;
      if (calls === 1) throw new Error('identity provider down');
      if (calls === 2) return undefined;
      return token;
    },
  });
  const errors = [];
  h.on('error', (e) => errors.push(e));
  const got = collector();
  h.subscribe(topic, got.handler, { since: 0 });
  try {
    await until(() => got.seqs.length >= 3, 10_000, () => `3 events, got ${got.seqs}, errors ${errors.map((e) => e.message)}`);
    assert.deepEqual(got.seqs, [1, 2, 3]);
    assert.equal(calls, 3);
    assert.deepEqual(errors.map((e) => e.code), ['token', 'token']);
    assert.match(errors[0].message, /identity provider down/);
    assert.match(errors[1].message, /no token/);
  } finally {
    h.close();
  }
});

test('a forbidden topic stops that subscription with an error; the others keep working', async () => {
  for (const transport of ['sse', 'poll']) {
    const allowed = uniqueTopic('ok');
    const secret = uniqueTopic('secret');
    const h = new Herald(server.url, { ...FAST, transports: [transport], token: mint({ subscribe: ['ok.>'] }) });
    const errors = [];
    h.on('error', (e) => errors.push(e));
    const got = collector();
    const ok = h.subscribe(allowed, got.handler, { since: 0 });
    const refused = [];
    const bad = h.subscribe(secret, () => assert.fail('a forbidden topic delivered'), { onError: (e) => refused.push(e) });
    try {
      await until(() => refused.length === 1, 10_000, `${transport}: the forbidden subscription is stopped`);
      assert.equal(bad.active, false);
      assert.equal(refused[0].code, 'forbidden');
      assert.deepEqual(errors.map((e) => [e.code, e.topics]), [['forbidden', [secret]]]);
      await publish(server, allowed, range(1, 5));
      await until(() => got.seqs.length >= 5, 10_000, () => `${transport}: 5 events, got ${got.seqs}`);
      assert.deepEqual(got.seqs, range(1, 5));
      assert.equal(ok.active, true);
    } finally {
      h.close();
    }
  }
});
