// What the client does with bad input: a server that answers garbage and
// closes at random, a token callback that throws or returns nothing, a
// reset of one topic, a topic the token forbids. Each time the app hears a
// clear `error` or `reset`, and the other subscriptions keep working.
import { test, before, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, uniqueTopic } from '../lib/cluster.js';
import { startProxy } from '../lib/proxy.js';
import { launchBrowser } from '../lib/pages.js';
import { openClient, subscribe, waitForEvents, waitForLog, clientLog, range } from '../lib/client.js';
import { sleep, until } from '../lib/wait.js';

const TRANSPORTS = ['websocket', 'sse', 'poll'];

let cluster;
let browser;
let proxy;
let context;

before(async () => {
  [cluster, browser] = await Promise.all([
    // Five events kept per topic, pruned every second: resets come quickly.
    startCluster({ nodes: 1, env: { HERALD_HEARTBEAT_SECS: '1', HERALD_RETENTION_EVENTS: '5', HERALD_PRUNE_INTERVAL_SECS: '1' } }),
    launchBrowser(),
  ]);
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
});

beforeEach(async () => {
  proxy = await startProxy(cluster.url(0));
  context = await browser.newContext();
});

afterEach(async () => {
  await context.close();
  await proxy.close();
});

function client(options, extra) {
  return openClient(context, `${proxy.url}/healthz`, proxy.url, { heartbeat: 1000, maxDelay: 1500, ...options }, extra);
}

async function publishRange(topic, from, to, gapMs = 0) {
  for (const n of range(from, to)) {
    await cluster.publish(topic, { n });
    if (gapMs) await sleep(gapMs);
  }
}

for (const transport of TRANSPORTS) {
  test(`${transport}: a server answering garbage and closing at random surfaces errors, delivers nothing bogus, and recovers`, async () => {
    const a = uniqueTopic('garbage-a');
    const b = uniqueTopic('garbage-b');
    await publishRange(a, 1, 2);
    await publishRange(b, 1, 2);
    // /client.js and the page come through before the server turns bad.
    const { page, problems } = await client({ token: cluster.token({ subscribe: [a, b] }), transports: [transport] });
    Object.assign(proxy.mode, { ws: 'garbage', sse: 'garbage', poll: 'garbage' });
    await subscribe(page, a, 0);
    await subscribe(page, b, 0);
    const during = await waitForLog(page, 'the client to report the garbage', (log) => log.errors.length >= 2);
    assert.deepEqual(during.events, { [a]: [], [b]: [] }, 'nothing from the garbage reached a handler');

    // The server comes back to its senses.
    Object.assign(proxy.mode, { ws: 'pass', sse: 'pass', poll: 'pass' });
    await waitForEvents(page, a, 2, 20000);
    await publishRange(a, 3, 5);
    await publishRange(b, 3, 5);
    await waitForEvents(page, a, 5);
    await waitForEvents(page, b, 5);
    const log = await clientLog(page);
    assert.deepEqual(log.events, { [a]: range(1, 5), [b]: range(1, 5) });
    for (const error of during.errors) {
      assert.ok(typeof error.code === 'string' && error.code && error.message, `a clear error: ${JSON.stringify(error)}`);
    }
    assert.equal(log.state, 'open');
    assert.deepEqual(problems, [], 'no uncaught exception in the page');
  });
}

test('a getToken that throws, then returns nothing, surfaces errors and is retried until it works', async () => {
  const topic = uniqueTopic('bad-token');
  await publishRange(topic, 1, 3);
  let calls = 0;
  const getToken = () => {
    calls += 1;
    if (calls === 1) throw new Error('the auth service is down');
    if (calls === 2) return undefined;
    return cluster.token({ subscribe: [topic] });
  };
  const { page, problems } = await client({ transports: ['websocket'] }, { getToken });
  await subscribe(page, topic, 0);
  await waitForEvents(page, topic, 3, 20000);
  const log = await clientLog(page);
  assert.deepEqual(log.events[topic], [1, 2, 3]);
  assert.ok(calls >= 3, `getToken was retried (${calls} calls)`);
  assert.ok(log.errors.length >= 2, `each failed getToken surfaced an error: ${JSON.stringify(log.errors)}`);
  assert.ok(log.errors.every((e) => e.code && e.message), JSON.stringify(log.errors));
  assert.deepEqual(problems, []);
});

/** Waits until the node has pruned `topic` down to seqs from `first` on. */
async function prunedTo(topic, first) {
  const token = cluster.token({ subscribe: [topic] });
  await until(`${topic} to be pruned to seq ${first}`, async () => {
    const answer = await fetch(`${cluster.url(0)}/v1/poll?topic=${topic}&since=${topic}:0`, { headers: { authorization: `Bearer ${token}` } });
    const { events } = await answer.json();
    return events[0]?.seq === first;
  }, { timeoutMs: 15000 });
}

for (const transport of TRANSPORTS) {
  test(`${transport}: a reset of one topic (events pruned) reaches the app and the other topic keeps flowing`, async () => {
    const gone = uniqueTopic('reset-a');
    const fine = uniqueTopic('reset-b');
    await publishRange(gone, 1, 8);
    await publishRange(fine, 1, 3);
    await prunedTo(gone, 4);
    const { page, problems } = await client({ token: cluster.token({ subscribe: [gone, fine] }), transports: [transport] });
    // The app had seen seq 1 of `gone`; 2 and 3 are no longer retained.
    await subscribe(page, gone, 1);
    await subscribe(page, fine, 0);
    await waitForEvents(page, fine, 3);
    await waitForLog(page, 'the reset', (log) => log.resets.length >= 1);
    await publishRange(gone, 9, 10);
    await publishRange(fine, 4, 5);
    await waitForEvents(page, gone, 7);
    await waitForEvents(page, fine, 5);
    const log = await clientLog(page);
    const appResets = log.resets.filter((r) => !r.viaSubscription);
    assert.deepEqual(appResets, [{ topic: gone, from: 4 }], 'one reset event, for that topic only');
    assert.ok(log.resets.some((r) => r.viaSubscription && r.topic === gone), 'the subscription\'s onReset heard it too');
    assert.deepEqual(log.events, { [gone]: range(4, 10), [fine]: range(1, 5) });
    assert.deepEqual(problems, []);
  });
}

for (const transport of TRANSPORTS) {
  test(`${transport}: a cursor beyond the head (a wiped store) is answered with a reset, and nothing after it is skipped`, async () => {
    const ahead = uniqueTopic('ahead');
    await publishRange(ahead, 1, 3);
    if (transport === 'poll') {
      // What the server itself answers, so that a failure says whose it is.
      const token = cluster.token({ subscribe: [ahead] });
      const answer = await fetch(`${cluster.url(0)}/v1/poll?topic=${ahead}&since=${ahead}:10`, { headers: { authorization: `Bearer ${token}` } });
      const body = await answer.json();
      assert.deepEqual(body.resets, [{ topic: ahead, from: 4 }],
        `server: GET /v1/poll from a cursor beyond the head answers ${JSON.stringify(body)}, without the reset docs/API.md promises`);
    }
    const { page, problems } = await client({ token: cluster.token({ subscribe: [ahead] }), transports: [transport] });
    await subscribe(page, ahead, 10);
    // docs/API.md: "A cursor beyond a topic's head ... is answered with a
    // reset whose from is the head plus one; the subscription continues
    // from the head."
    await waitForLog(page, 'the reset', (log) => log.resets.length >= 1);
    await publishRange(ahead, 4, 5);
    await waitForEvents(page, ahead, 2);
    const log = await clientLog(page);
    assert.deepEqual(log.resets.filter((r) => !r.viaSubscription), [{ topic: ahead, from: 4 }]);
    assert.deepEqual(log.events[ahead], [4, 5]);
    assert.deepEqual(problems, []);
  });
}

for (const transport of TRANSPORTS) {
  test(`${transport}: a forbidden topic stops that subscription with an error and the allowed one keeps flowing`, async () => {
    const forbidden = uniqueTopic('forbidden');
    const allowed = uniqueTopic('allowed');
    await publishRange(allowed, 1, 2);
    const { page, problems } = await client({ token: cluster.token({ subscribe: [allowed] }), transports: [transport] });
    await subscribe(page, forbidden, 0);
    await subscribe(page, allowed, 0);
    await waitForLog(page, 'the forbidden topic to be refused', (log) => log.subErrors.length >= 1);
    await waitForEvents(page, allowed, 2);
    await publishRange(allowed, 3, 4);
    await waitForEvents(page, allowed, 4);
    const log = await clientLog(page);
    assert.deepEqual(log.subErrors.map((e) => [e.topic, e.code]), [[forbidden, 'forbidden']]);
    assert.equal(await page.evaluate((t) => window.subs[t].active, forbidden), false, 'the refused subscription is stopped');
    assert.deepEqual(log.events[allowed], range(1, 4));
    assert.deepEqual(problems, []);
  });
}
