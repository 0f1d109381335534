// Several nodes behind one address: tickets that work on every node, and
// drains that clients (the library, and a bare EventSource) ride out.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, uniqueTopic } from '../lib/cluster.js';
import { startProxy } from '../lib/proxy.js';
import { startPageServer, launchBrowser, watchPage, waitInPage } from '../lib/pages.js';
import { request } from '../lib/http.js';
import { openClient, subscribe, waitForEvents, clientLog, range } from '../lib/client.js';
import { sleep } from '../lib/wait.js';

let cluster;
let pages;
let browser;

before(async () => {
  pages = await startPageServer();
  [cluster, browser] = await Promise.all([
    startCluster({
      nodes: 3,
      env: {
        HERALD_HEARTBEAT_SECS: '1',
        HERALD_DRAIN_SECS: '2',
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
  await context.addCookies([{ name: 'herald_token', value: cluster.token({ subscribe: [topic] }), domain: 'localhost', path: '/' }]);
  const page = await context.newPage();
  const record = watchPage(page);
  await page.goto(pages.localhost);
  // Page code only: a bare EventSource with credentials, on another origin
  // of the same site (so the cookie goes along).
  await page.evaluate((url) => {
    window.got = [];
    window.opens = 0;
    window.drains = 0;
    const es = new EventSource(url, { withCredentials: true });
    es.onopen = () => { window.opens += 1; };
    es.onmessage = (m) => window.got.push(JSON.parse(m.data).seq);
    es.addEventListener('drain', () => { window.drains += 1; });
    window.es = es;
  }, `http://localhost:${proxy.port}/v1/sse?topic=${topic}&since=${topic}:0`);
  try {
    await publishRange(topic, 1, 10, { node: 1 });
    await waitInPage(page, 'the first ten events', () => window.got.length >= 10);

    // The load balancer sends new connections to node 1; node 0 drains.
    proxy.setTarget(cluster.url(1));
    cluster.terminate(0);
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
    await context.close();
    await proxy.close();
  }
});

test('the client resumes on another node, with nothing lost, when its node drains', async () => {
  const topic = uniqueTopic('client-drain');
  const proxy = await startProxy(cluster.url(1));
  const context = await browser.newContext();
  try {
    const { page, problems } = await openClient(context, `${proxy.url}/healthz`, proxy.url, {
      token: cluster.token({ subscribe: [topic] }),
      heartbeat: 1000,
    });
    await subscribe(page, topic, 0);
    await publishRange(topic, 1, 10, { node: 2 });
    await waitForEvents(page, topic, 10);
    const before = await clientLog(page);

    proxy.setTarget(cluster.url(2));
    cluster.terminate(1);
    await publishRange(topic, 11, 40, { node: 2, gapMs: 50 });
    await waitForEvents(page, topic, 40, 30000);
    await sleep(300);
    const log = await clientLog(page);
    assert.deepEqual(log.events[topic], range(1, 40), 'every event once, in order');
    assert.ok(log.states.slice(before.states.length).includes('reconnecting'), `it reconnected: ${log.states}`);
    assert.equal(log.state, 'open');
    assert.equal(log.transport, before.transport, 'the drain did not make it fall back');
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await proxy.close();
  }
});
