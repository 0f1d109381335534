// Tabs share a connection only with tabs of the same user, acknowledge only
// what their own handlers ran on, and a hand-over of the connection (the
// leader tab closing, or freezing) loses no live event.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, uniqueTopic } from '../lib/cluster.js';
import { launchBrowser } from '../lib/pages.js';
import { openClient, subscribe, waitForEvents, waitForLog, clientLog, range } from '../lib/client.js';
import { sleep, until } from '../lib/wait.js';

let cluster;
let browser;

before(async () => {
  [cluster, browser] = await Promise.all([
    startCluster({ nodes: 1, env: { HERALD_HEARTBEAT_SECS: '1', HERALD_ACK_FLUSH_MS: '50' } }),
    launchBrowser(),
  ]);
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
});

test("two users' tabs in one browser each get their own permitted topic", async () => {
  const [aliceTopic, bobTopic] = [uniqueTopic('alice'), uniqueTopic('bob')];
  await cluster.publish(aliceTopic, { n: 1 });
  await cluster.publish(bobTopic, { n: 1 });
  const context = await browser.newContext();
  try {
    const alice = await openClient(context, `${cluster.url(0)}/healthz`, cluster.url(0), {
      token: cluster.token({ sub: 'alice', subscribe: [aliceTopic] }),
    });
    await subscribe(alice.page, aliceTopic, 0);
    await waitForEvents(alice.page, aliceTopic, 1);
    const bob = await openClient(context, `${cluster.url(0)}/healthz`, cluster.url(0), {
      token: cluster.token({ sub: 'bob', subscribe: [bobTopic] }),
    });
    await subscribe(bob.page, bobTopic, 0);
    const bobLog = await waitForLog(bob.page, "bob's event or an error", (log) => (log.events[bobTopic] || []).length >= 1 || log.subErrors.length > 0);
    assert.deepEqual(bobLog.subErrors, [], "bob's topic was not refused");
    assert.deepEqual(bobLog.events[bobTopic], [1]);
    await cluster.publish(aliceTopic, { n: 2 });
    await cluster.publish(bobTopic, { n: 2 });
    assert.deepEqual(await waitForEvents(alice.page, aliceTopic, 2), [1, 2]);
    assert.deepEqual(await waitForEvents(bob.page, bobTopic, 2), [1, 2]);
    const aliceLog = await clientLog(alice.page);
    assert.deepEqual([...aliceLog.errors, ...aliceLog.subErrors, ...bobLog.errors], []);
    assert.deepEqual([...alice.problems, ...bob.problems], []);
  } finally {
    await context.close();
  }
});

test("a leader tab with ack 'auto' does not acknowledge what only a manual-ack tab received", async () => {
  const [own, theirs] = [uniqueTopic('own'), uniqueTopic('theirs')];
  const sub = 'acker';
  const token = cluster.token({ sub, subscribe: [own, theirs] });
  const context = await browser.newContext();
  try {
    const leader = await openClient(context, `${cluster.url(0)}/healthz`, cluster.url(0), { token, ack: 'auto' });
    await subscribe(leader.page, own, undefined);
    await waitForLog(leader.page, 'the leader connected', (log) => log.state === 'open' && log.transport);
    const follower = await openClient(context, `${cluster.url(0)}/healthz`, cluster.url(0), { token, ack: 'manual' });
    await subscribe(follower.page, theirs, 0);
    await cluster.publish(theirs, { n: 1 });
    assert.deepEqual(await waitForEvents(follower.page, theirs, 1), [1]);
    assert.equal((await clientLog(follower.page)).transport, undefined, 'the second tab follows the first');
    // The leader's own event is acknowledged (after the other one was delivered, in the same or a later batch).
    await cluster.publish(own, { n: 1 });
    assert.deepEqual(await waitForEvents(leader.page, own, 1), [1]);
    await until(`${sub} acknowledged ${own}`, async () => (await cluster.acked(own, sub)) === 1);
    assert.equal(await cluster.acked(theirs, sub), undefined, 'nobody acknowledged the manual tab\'s event');
    // The manual tab acknowledges it itself.
    await follower.page.evaluate((t) => window.h.ack({ topic: t, seq: 1 }), theirs);
    await until(`${sub} acknowledged ${theirs}`, async () => (await cluster.acked(theirs, sub)) === 1);
  } finally {
    await context.close();
  }
});

test('the leader tab closing while events are published: a live follower gets every event once', async () => {
  const topic = uniqueTopic('handover');
  const token = cluster.token({ sub: 'handover', subscribe: [topic] });
  const context = await browser.newContext();
  try {
    const leader = await openClient(context, `${cluster.url(0)}/healthz`, cluster.url(0), { token, heartbeat: 1000 });
    await subscribe(leader.page, topic, undefined);
    await waitForLog(leader.page, 'the leader connected', (log) => log.state === 'open' && log.transport);
    const follower = await openClient(context, `${cluster.url(0)}/healthz`, cluster.url(0), { token, heartbeat: 1000 });
    await subscribe(follower.page, topic, undefined);
    // The follower knows where the topic stands (the leader told it), before any event.
    await follower.page.waitForFunction((t) => window.subs[t].seq === 0, topic, { timeout: 10000 });
    const publishing = (async () => {
      for (const n of range(1, 30)) {
        await cluster.publish(topic, { n });
        await sleep(30);
      }
    })();
    await leader.page.close({ runBeforeUnload: true });
    await publishing;
    assert.deepEqual(await waitForEvents(follower.page, topic, 30), range(1, 30));
    // One more event, awaited: a late repeat of any earlier one would stand
    // before it in the log.
    await cluster.publish(topic, { n: 31 });
    assert.deepEqual(await waitForEvents(follower.page, topic, 31), range(1, 31));
    const log = await clientLog(follower.page);
    assert.deepEqual(log.events[topic], range(1, 31), 'every event once, in order');
    assert.ok(log.transport, 'the follower took over the connection');
    assert.deepEqual(follower.problems, []);
  } finally {
    await context.close();
  }
});

test('a frozen leader tab is replaced: the follower takes over and gets every event once', async () => {
  const topic = uniqueTopic('frozen');
  const token = cluster.token({ sub: 'frozen', subscribe: [topic] });
  const context = await browser.newContext();
  const options = { token, heartbeat: 1000, pongTimeout: 1000 };
  try {
    const leader = await openClient(context, `${cluster.url(0)}/healthz`, cluster.url(0), options);
    await subscribe(leader.page, topic, undefined);
    await waitForLog(leader.page, 'the leader connected', (log) => log.state === 'open' && log.transport);
    const follower = await openClient(context, `${cluster.url(0)}/healthz`, cluster.url(0), options);
    await subscribe(follower.page, topic, undefined);
    await follower.page.waitForFunction((t) => window.subs[t].seq === 0, topic, { timeout: 10000 });
    await cluster.publish(topic, { n: 1 });
    await waitForEvents(follower.page, topic, 1);
    // The leader tab freezes: its main thread is busy for 10 s (it holds the lock, answers nothing).
    const frozen = leader.page.evaluate(() => {
      const end = Date.now() + 10000;
      while (Date.now() < end);
    }).catch(() => {});
    for (const n of range(2, 5)) await cluster.publish(topic, { n });
    const log = await waitForLog(follower.page, 'the follower to take over and get 5 events',
      (l) => l.transport && (l.events[topic] || []).length >= 5, 30000);
    assert.deepEqual(log.events[topic], range(1, 5));
    assert.deepEqual(follower.problems, []);
    // Awake again, the old leader follows: one tab still delivers each event once.
    await frozen;
    await cluster.publish(topic, { n: 6 });
    assert.deepEqual(await waitForEvents(follower.page, topic, 6), range(1, 6));
    assert.deepEqual(await waitForEvents(leader.page, topic, 6), range(1, 6));
  } finally {
    await context.close();
  }
});
