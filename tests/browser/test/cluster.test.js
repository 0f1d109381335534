// Several nodes behind one address: tickets that work on every node, and
// drains that clients (the library, and a bare EventSource) ride out.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startCluster, uniqueTopic } from '../lib/cluster.js';
import { startProxy } from '../lib/proxy.js';
import { startPageServer, launchBrowser, watchPage, waitInPage } from '../lib/pages.js';
import { request } from '../lib/http.js';
import { openClient, subscribe, waitForEvents, waitForLog, clientLog, range } from '../lib/client.js';
import { sleep } from '../lib/wait.js';

let cluster;
let pages;
let browser;

before(async () => {
  pages = await startPageServer();
  [cluster, browser] = await Promise.all([
    startCluster({
      nodes: 4,
      env: {
        HERALD_HEARTBEAT_SECS: '1',
        HERALD_DRAIN_SECS: '6',
        HERALD_ALLOWED_ORIGINS: pages.localhost,
      },
    }),
    launchBrowser(),
  ]);
  pages.heraldUrl = cluster.url(0);
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
  await pages?.close();
});

/** Publishes seqs `from`..`to` of `topic` through `node`, `gapMs` apart. */
async function publishRange(topic, from, to, { node, gapMs = 0 }) {
  for (const seq of range(from, to)) {
    const answer = await cluster.publish(topic, { n: seq }, { node });
    assert.equal(answer.seq, seq, 'the topic is this test\'s alone, so seqs are ours');
    if (gapMs) await sleep(gapMs);
  }
}

/** Opens `count` SSE streams on `base` from Node (they keep a drain busy). */
async function holdStreams(base, topic, count) {
  const token = cluster.token({ subscribe: [topic] });
  return Promise.all(Array.from({ length: count }, () => new Promise((resolve, reject) => {
    const req = http.get(`${base}/v1/sse?topic=${topic}`, { headers: { authorization: `Bearer ${token}` } }, (res) => {
      res.on('error', () => {});
      res.resume();
      resolve(req);
    });
    req.on('error', reject);
    req.setTimeout(10000, () => req.destroy(new Error('no SSE answer within 10 s')));
  })));
}

test('a ticket minted on one node opens a connection on another, once', async () => {
  const topic = uniqueTopic('ticket');
  await publishRange(topic, 1, 3, { node: 0 });
  const context = await browser.newContext();
  const page = await context.newPage();
  const record = watchPage(page);
  await page.goto(pages.localhost);
  const token = cluster.token({ subscribe: [topic] });
  const minted = await page.evaluate(async ({ mintOn, openOn, topic, token }) => {
    const answer = await fetch(`${mintOn}/v1/tickets`, { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
    const { ticket, expires_in: expiresIn } = await answer.json();
    window.url = `${openOn}/v1/sse?topic=${topic}&since=${topic}:0&ticket=${encodeURIComponent(ticket)}`;
    window.got = [];
    const es = new EventSource(window.url);
    es.onmessage = (m) => window.got.push(JSON.parse(m.data).seq);
    window.first = es;
    return { status: answer.status, ticket, expiresIn };
  }, { mintOn: cluster.url(0), openOn: cluster.url(1), topic, token });
  assert.equal(minted.status, 200);
  assert.ok(minted.expiresIn > 0);
  await waitInPage(page, 'three events through a ticket from another node', () => window.got.length >= 3);
  assert.deepEqual(await page.evaluate(() => window.got), [1, 2, 3], `events through a ticket from another node; page: ${record.console.join('\n')}`);

  // The same ticket again, on a third node: refused, and a native
  // EventSource gives up on it (401 is final).
  const secondUse = await page.evaluate((third) => new Promise((resolve) => {
    const es = new EventSource(window.url.replace(/^http:\/\/[^/]+/, third));
    es.onopen = () => { es.close(); resolve('opened'); };
    es.onerror = () => { const state = es.readyState; es.close(); resolve(state === EventSource.CLOSED ? 'refused' : 'retrying'); };
  }), cluster.url(2));
  assert.equal(secondUse, 'refused', 'a used ticket stops a native EventSource');
  const reused = await request(`${cluster.url(2)}/v1/sse?topic=${topic}&ticket=${encodeURIComponent(minted.ticket)}`);
  assert.equal(reused.status, 401, 'a used ticket is refused on every node');
  assert.equal(reused.body.code, 'unauthorized');
  await context.close();
});

test('a native EventSource with cookie auth resumes on another node when its node drains', async () => {
  const topic = uniqueTopic('native-drain');
  const proxy = await startProxy(cluster.url(0));
  const context = await browser.newContext();
  await context.addCookies([{ name: 'herald_token', value: cluster.token({ subscribe: [topic] }), domain: '127.0.0.1', path: '/' }]);
  const page = await context.newPage();
  const record = watchPage(page);
  // The page is served by Herald behind the load balancer (the proxy), as
  // an app served next to it would be. Page code only: a bare EventSource
  // with the session cookie. (Cross-origin cookies: origins.test.js.)
  await page.goto(`${proxy.url}/healthz`);
  let holders;
  await page.evaluate((url) => {
    window.got = [];
    window.opens = 0;
    window.drains = 0;
    const es = new EventSource(url, { withCredentials: true });
    es.onopen = () => { window.opens += 1; };
    es.onmessage = (m) => window.got.push(JSON.parse(m.data).seq);
    es.addEventListener('drain', () => { window.drains += 1; });
    window.errors = [];
    es.onerror = () => window.errors.push(es.readyState === EventSource.CLOSED ? 'error, closed for good' : 'error, retrying');
    window.es = es;
  }, `${proxy.url}/v1/sse?topic=${topic}&since=${topic}:0`);
  try {
    await publishRange(topic, 1, 10, { node: 1 });
    await waitInPage(page, 'the first ten events', () => window.got.length >= 10);

    // Node 0 drains (other streams keep it draining for a few seconds); the
    // load balancer has not noticed yet and sends the next connection to it
    // again, then to node 1. The stream drops, and the EventSource's
    // reconnect lands on the draining node: its answer must make a bare
    // EventSource try again, never stop it for good.
    holders = await holdStreams(cluster.url(0), topic, 4);
    cluster.terminate(0);
    proxy.setTargets([cluster.url(0), cluster.url(1)]);
    proxy.cut('sse');
    await publishRange(topic, 11, 40, { node: 1, gapMs: 50 });
    await waitInPage(page, 'forty events across the drain', () => window.got.length >= 40, undefined, 20000);
    await sleep(300); // anything duplicated would arrive right behind
    const seen = await page.evaluate(() => ({ got: window.got, opens: window.opens, drains: window.drains, state: window.es.readyState }));
    assert.deepEqual(seen.got, range(1, 40), `every event once, in order; page: ${record.console.join('\n')}`);
    assert.ok(seen.drains >= 1, 'the draining node said so with event: drain');
    assert.ok(seen.opens >= 2, 'the EventSource reconnected by itself');
    assert.notEqual(seen.state, 2, 'the EventSource is still open (not CLOSED)');
    assert.ok(proxy.count('sse') >= 2);
  } finally {
    holders?.forEach((holder) => holder.destroy());
    await context.close();
    await proxy.close();
  }
});

/**
 * A client behind the proxy on `drained`; that node drains while events
 * are published through `survivor`, and the proxy sends new connections to
 * `next` (one node, or several in turn).
 */
async function clientRidesDrain({ drained, survivor, next }) {
  const topic = uniqueTopic('client-drain');
  const proxy = await startProxy(cluster.url(drained));
  const context = await browser.newContext();
  try {
    const { page, problems } = await openClient(context, `${proxy.url}/healthz`, proxy.url, {
      token: cluster.token({ subscribe: [topic] }),
      heartbeat: 1000,
    });
    await subscribe(page, topic, 0);
    await publishRange(topic, 1, 10, { node: survivor });
    await waitForEvents(page, topic, 10);
    const before = await clientLog(page);

    cluster.terminate(drained);
    proxy.setTargets(next.map((i) => cluster.url(i)));
    await publishRange(topic, 11, 40, { node: survivor, gapMs: 50 });
    await waitForEvents(page, topic, 40, 30000);
    // The drain spreads its closes over HERALD_DRAIN_SECS: wait for this one.
    await waitForLog(page, 'the client to reconnect elsewhere', (log) =>
      log.states.slice(before.states.length).includes('reconnecting') && log.state === 'open', 20000);
    await cluster.publish(topic, { n: 41 }, { node: survivor });
    await waitForEvents(page, topic, 41);
    await sleep(300);
    const log = await clientLog(page);
    assert.deepEqual(log.events[topic], range(1, 41), 'every event once, in order');
    assert.deepEqual(problems, []);
    return { before, log, proxy };
  } finally {
    await context.close();
    await proxy.close();
  }
}

test('the client resumes on another node, with nothing lost, when its node drains', async () => {
  const { before, log } = await clientRidesDrain({ drained: 1, survivor: 3, next: [3] });
  assert.equal(log.transport, before.transport, `a drain is not a reason to change transport (states: ${log.states})`);
});

test('a client whose reconnect first lands on the draining node still resumes elsewhere, on the same transport', async () => {
  const { before, log } = await clientRidesDrain({ drained: 2, survivor: 3, next: [2, 3] });
  // The draining node refuses the upgrade with 503, which a browser shows a
  // WebSocket only as a failed connection (1006), like a proxy that blocks
  // WebSockets: the client should not give WebSocket up for the session
  // after it has worked on this origin.
  assert.equal(log.transport, before.transport, `transport after the drain (states: ${log.states})`);
});
