// What the client does with bad input: a server that answers garbage and
// closes at random, a token callback that throws or returns nothing, a
// reset of one topic, a topic the token forbids. Each time the app hears a
// clear `error` or `reset`, and the other subscriptions keep working.
import { test, before, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, uniqueTopic } from '../lib/cluster.js';
import { startProxy } from '../lib/proxy.js';
import { launchBrowser } from '../lib/pages.js';
import { openClient, subscribe, waitForEvents, clientLog, range } from '../lib/client.js';
import { sleep, until } from '../lib/wait.js';

const TRANSPORTS = ['websocket', 'sse', 'poll'];

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
    await until('the client to report the garbage', async () => (await clientLog(page)).errors.length >= 2, { timeoutMs: 15000 });
    const during = await clientLog(page);
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

for (const transport of TRANSPORTS) {
  test(`${transport}: a reset of one topic reaches the app and the other topic keeps flowing`, async () => {
    const gone = uniqueTopic('reset-a');
    const fine = uniqueTopic('reset-b');
    await publishRange(gone, 1, 3);
    await publishRange(fine, 1, 3);
    const { page, problems } = await client({ token: cluster.token({ subscribe: [gone, fine] }), transports: [transport] });
    // A cursor beyond the head (a wiped store, another deployment): the
    // server answers with a reset from head + 1.
    await subscribe(page, gone, 10);
    await subscribe(page, fine, 0);
    await waitForEvents(page, fine, 3);
    await until('the reset', async () => (await clientLog(page)).resets.length >= 1, { timeoutMs: 15000 });
    await publishRange(gone, 4, 5);
    await publishRange(fine, 4, 5);
    await waitForEvents(page, gone, 2);
    await waitForEvents(page, fine, 5);
    const log = await clientLog(page);
    const appResets = log.resets.filter((r) => !r.viaSubscription);
    assert.deepEqual(appResets, [{ topic: gone, from: 4 }], 'one reset event, for that topic only');
    assert.ok(log.resets.some((r) => r.viaSubscription && r.topic === gone), 'the subscription\'s onReset heard it too');
    assert.deepEqual(log.events, { [gone]: [4, 5], [fine]: range(1, 5) });
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
    await until('the forbidden topic to be refused', async () => (await clientLog(page)).subErrors.length >= 1, { timeoutMs: 15000 });
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
