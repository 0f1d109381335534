// The client under Node with the browser-only APIs absent (no window,
// document, storage, BroadcastChannel, navigator.locks, WebSocket,
// EventSource): it must still subscribe, fall back to what exists (SSE over
// fetch streaming, then polling) and resume, with tab sharing, visibility
// and storage doing nothing.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { collector, mint, publish, range, startHerald, startProxy, uniqueTopic, until } from './helpers.mjs';

for (const name of ['WebSocket', 'EventSource', 'BroadcastChannel', 'navigator', 'window', 'document', 'localStorage', 'sessionStorage', 'location']) {
  delete globalThis[name];
  assert.equal(globalThis[name], undefined, `${name} is absent`);
}
const { Herald, default: DefaultHerald, VERSION } = await import('../../../services/herald/static/client.js');

const FAST = { minDelay: 50, maxDelay: 500, openTimeout: 3000 };
let server;
before(async () => {
  server = await startHerald();
});
after(() => server?.stop());

test('Herald is the default export too', () => {
  assert.equal(DefaultHerald, Herald);
});

test('VERSION is the npm package\'s version', async () => {
  const { readFile } = await import('node:fs/promises');
  const pkg = JSON.parse(await readFile(new URL('../../../clients/js/package.json', import.meta.url), 'utf8'));
  assert.equal(VERSION, pkg.version);
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

test('a handler that throws is reported; the other handlers and later events still arrive', async () => {
  const topic = uniqueTopic();
  const h = new Herald(server.url, { ...FAST, token: server.token });
  const errors = [];
  h.on('error', (e) => errors.push(e));
  const got = collector();
  h.subscribe(topic, (e) => {
    if (e.seq === 2) throw new Error('boom');
  }, { since: 0 });
  h.subscribe(topic, got.handler, { since: 0 });
  try {
    await publish(server, topic, range(1, 4));
    await until(() => got.seqs.length >= 4, 10_000, () => `4 events, got ${got.seqs}`);
    assert.deepEqual(got.seqs, range(1, 4));
    assert.deepEqual(errors.map((e) => [e.code, e.topics]), [['handler', [topic]]]);
    assert.match(errors[0].message, /boom/);
  } finally {
    h.close();
  }
});

test('a server that answers garbage is reported, and the client recovers once a real server answers', async () => {
  const http = await import('node:http');
  const garbage = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': req.url.startsWith('/v1/sse') ? 'text/event-stream' : 'application/json' });
    // SSE: frames that are not JSON, then the end; poll: not the poll answer.
    res.end(req.url.startsWith('/v1/sse') ? 'data: {nope\n\nevent: reset\ndata: 7\n\n' : '{"events": "no"}');
  });
  await new Promise((r) => garbage.listen(0, '127.0.0.1', r));
  const proxy = await startProxy(garbage.address().port);
  const topic = uniqueTopic();
  await publish(server, topic, range(1, 3));
  const h = new Herald(proxy.url, { ...FAST, token: server.token, transports: ['sse', 'poll'] });
  const errors = [];
  h.on('error', (e) => errors.push(e.code));
  const got = collector();
  h.subscribe(topic, got.handler, { since: 0 });
  try {
    await until(() => errors.includes('bad_frame'), 10_000, () => `a bad_frame error, got ${errors}`);
    assert.deepEqual(got.seqs, []);
    proxy.targetPort = server.port;
    proxy.cut();
    await until(() => got.seqs.length >= 3, 10_000, () => `3 events, got ${got.seqs}, errors ${errors}`);
    assert.deepEqual(got.seqs, [1, 2, 3]);
  } finally {
    h.close();
    await proxy.close();
    garbage.close();
  }
});

test('a poll answer that is not the protocol is reported as bad_response', async () => {
  const http = await import('node:http');
  const garbage = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(req.url.startsWith('/v1/poll') ? '{"events": "no"}' : 'not json at all');
  });
  await new Promise((r) => garbage.listen(0, '127.0.0.1', r));
  const h = new Herald(`http://127.0.0.1:${garbage.address().port}`, { ...FAST, token: server.token, transports: ['poll'] });
  const errors = [];
  h.on('error', (e) => errors.push(e.code));
  h.subscribe(uniqueTopic(), () => assert.fail('nothing to deliver'));
  try {
    await until(() => errors.filter((c) => c === 'bad_response').length >= 2, 10_000, () => `bad_response errors, got ${errors}`);
    assert.equal(h.state, 'reconnecting');
  } finally {
    h.close();
    garbage.close();
  }
});

test('persisted positions resume a new client where the last one stopped', async () => {
  const topic = uniqueTopic();
  const items = new Map();
  const storage = { getItem: (k) => items.get(k) ?? null, setItem: (k, v) => items.set(k, v) };
  await publish(server, topic, range(1, 3));
  const first = new Herald(server.url, { ...FAST, token: server.token, persist: storage });
  const a = collector();
  first.subscribe(topic, a.handler, { since: 0 });
  await until(() => a.seqs.length >= 3, 10_000, () => `3 events, got ${a.seqs}`);
  first.close();
  assert.equal(items.get(`herald:${server.url}:${topic}`), '3');

  await publish(server, topic, range(4, 6));
  const second = new Herald(server.url, { ...FAST, token: server.token, persist: storage });
  const b = collector();
  second.subscribe(topic, b.handler);
  try {
    await until(() => b.seqs.length >= 3, 10_000, () => `3 events, got ${b.seqs}`);
    assert.deepEqual(b.seqs, [4, 5, 6]);
  } finally {
    second.close();
  }
});
