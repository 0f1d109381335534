// Each transport of the client library against a real node, through a
// proxy that plays the middleboxes browsers meet: delivery in order,
// fallback when WebSocket or SSE is blocked, cuts mid-stream, and tokens
// that expire under a long-lived stream.
import { test, before, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, uniqueTopic } from '../lib/cluster.js';
import { startProxy } from '../lib/proxy.js';
import { launchBrowser } from '../lib/pages.js';
import { openClient, subscribe, waitForEvents, waitForLog, clientLog, range } from '../lib/client.js';
import { sleep } from '../lib/wait.js';

const TRANSPORTS = ['websocket', 'sse', 'poll'];
/** The proxy's name for the requests of each transport. */
const KIND = { websocket: 'ws', sse: 'sse', poll: 'poll' };

let cluster;
let browser;
let proxy;
let context;

before(async () => {
  [cluster, browser] = await Promise.all([
    startCluster({ nodes: 1, env: { HERALD_HEARTBEAT_SECS: '1' } }),
    launchBrowser(),
  ]);
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
});

// A fresh proxy (so a fresh origin: nothing remembered about transports)
// and a fresh browser context per test.
beforeEach(async () => {
  proxy = await startProxy(cluster.url(0));
  context = await browser.newContext();
});

afterEach(async () => {
  await context.close();
  await proxy.close();
});

/** A client on a page of the proxy's origin, talking to Herald through it. */
function client(options, extra) {
  return openClient(context, `${proxy.url}/healthz`, proxy.url, { heartbeat: 1000, ...options }, extra);
}

async function publishRange(topic, from, to, gapMs = 0) {
  for (const n of range(from, to)) {
    await cluster.publish(topic, { n });
    if (gapMs) await sleep(gapMs);
  }
}

for (const transport of TRANSPORTS) {
  test(`${transport}: delivers every event once, in order`, async () => {
    const topic = uniqueTopic(`order-${transport}`);
    await publishRange(topic, 1, 5); // history, replayed from since 0
    const { page, problems } = await client({ token: cluster.token({ subscribe: [topic] }), transports: [transport] });
    await subscribe(page, topic, 0);
    await waitForEvents(page, topic, 5);
    await publishRange(topic, 6, 30, 10); // live
    await waitForEvents(page, topic, 30);
    await sleep(200); // a duplicate would arrive right behind
    const log = await clientLog(page);
    assert.deepEqual(log.events[topic], range(1, 30));
    assert.equal(log.transport, transport);
    assert.equal(log.state, 'open');
    assert.ok(proxy.count(KIND[transport]) >= 1, `the ${transport} requests went through the proxy`);
    if (transport !== 'websocket') assert.equal(proxy.count('ws'), 0, 'no WebSocket was tried');
    assert.deepEqual(problems, []);
  });
}

const FALLBACKS = [
  { name: 'a refused WebSocket upgrade falls back to SSE', mode: { ws: 'refuse' }, expect: 'sse' },
  { name: 'a swallowed WebSocket upgrade falls back to SSE', mode: { ws: 'swallow' }, expect: 'sse' },
  { name: 'a blocked WebSocket and a refused SSE stream fall back to polling', mode: { ws: 'refuse', sse: 'refuse' }, expect: 'poll' },
  { name: 'a blocked WebSocket and a swallowed SSE stream fall back to polling', mode: { ws: 'swallow', sse: 'swallow' }, expect: 'poll' },
];

for (const { name, mode, expect } of FALLBACKS) {
  test(name, async () => {
    Object.assign(proxy.mode, mode);
    const topic = uniqueTopic('fallback');
    await publishRange(topic, 1, 3);
    const started = Date.now();
    const { page, problems } = await client({ token: cluster.token({ subscribe: [topic] }), openTimeout: 2000 });
    await subscribe(page, topic, 0);
    await waitForEvents(page, topic, 3, 20000);
    const fellBackMs = Date.now() - started;
    await publishRange(topic, 4, 10, 10);
    await waitForEvents(page, topic, 10);
    const log = await clientLog(page);
    assert.deepEqual(log.events[topic], range(1, 10));
    assert.equal(log.transport, expect, `fell back to ${expect}; log: ${JSON.stringify(log)}`);
    for (const [kind, how] of Object.entries(mode)) {
      assert.ok(proxy.count(kind, how) >= 1, `the ${kind} attempt was ${how}d by the proxy`);
    }
    assert.ok(fellBackMs < 15000, `fallback took ${fellBackMs} ms`);
    assert.deepEqual(problems, []);
  });
}

for (const transport of TRANSPORTS) {
  test(`${transport}: connections cut mid-stream lose and repeat nothing`, async () => {
    const topic = uniqueTopic(`cut-${transport}`);
    const { page, problems } = await client({ token: cluster.token({ subscribe: [topic] }), transports: [transport], maxDelay: 2000 });
    await subscribe(page, topic, 0);
    await waitForLog(page, 'the client to be open', (log) => log.state === 'open');
    let cuts = 0;
    const publishing = publishRange(topic, 1, 60, 40);
    // Six cuts 350 ms apart, then more until three connections were cut
    // (at most 40 tries): a poll between two requests, or a client backing
    // off after a cut, has no connection to cut.
    const cutting = (async () => {
      for (let i = 0; i < 40 && (i < 6 || cuts < 3); i += 1) {
        await sleep(350);
        cuts += proxy.cut(KIND[transport]);
      }
    })();
    await Promise.all([publishing, cutting]);
    await waitForEvents(page, topic, 60, 30000);
    await sleep(300);
    const log = await clientLog(page);
    assert.deepEqual(log.events[topic], range(1, 60), 'every event exactly once, in order');
    assert.ok(cuts >= 3, `the proxy cut ${cuts} connections`);
    assert.ok(proxy.count(KIND[transport]) > 1, 'the client reconnected');
    assert.equal(log.transport, transport);
    assert.deepEqual(problems, []);
  });
}

for (const transport of TRANSPORTS) {
  test(`${transport}: tokens that expire every 3 s, renewed with getToken, keep the stream alive`, async () => {
    const topic = uniqueTopic(`expiry-${transport}`);
    let minted = 0;
    const getToken = () => {
      minted += 1;
      return cluster.token({ subscribe: [topic], ttlSecs: 3 });
    };
    const { page, problems } = await client({ transports: [transport] }, { getToken });
    await subscribe(page, topic, 0);
    // 8 s: tokens expire at least twice over.
    await publishRange(topic, 1, 16, 500);
    await waitForEvents(page, topic, 16, 20000);
    await sleep(300);
    const log = await clientLog(page);
    assert.deepEqual(log.events[topic], range(1, 16), `nothing lost across expiries; log: ${JSON.stringify(log)}`);
    assert.ok(minted >= 3, `getToken was asked for fresh tokens (${minted} calls)`);
    assert.equal(log.state, 'open');
    assert.deepEqual(log.errors.filter((e) => /unauthorized|token/.test(e.code)), [], 'no credential errors reached the app');
    if (transport === 'websocket') {
      assert.equal(proxy.count('ws'), 1, 'the WebSocket renewed its token in-band, without reconnecting');
    }
    assert.deepEqual(problems, []);
  });
}
