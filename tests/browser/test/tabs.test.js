// Five tabs of one origin share one connection: the server counts one, every
// tab gets every event, and closing the leader tab hands over without loss.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, uniqueTopic } from '../lib/cluster.js';
import { launchBrowser } from '../lib/pages.js';
import { openClient, subscribe, waitForEvents, range } from '../lib/client.js';
import { sleep, until } from '../lib/wait.js';

let cluster;
let browser;

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

const openConnections = async () => {
  const { connections } = await cluster.stats();
  return connections.ws + connections.sse + connections.poll;
};

test('five tabs hold one connection, all get every event, and the leader can leave without loss', async () => {
  const topic = uniqueTopic('tabs');
  const token = cluster.token({ subscribe: [topic] });
  const context = await browser.newContext();
  const base = cluster.url(0);
  const tabs = [];
  try {
    for (let i = 0; i < 5; i += 1) {
      const tab = await openClient(context, `${base}/healthz`, base, { token, heartbeat: 1000 });
      tab.sockets = 0;
      tab.page.on('websocket', () => { tab.sockets += 1; });
      await subscribe(tab.page, topic, 0);
      tabs.push(tab);
    }
    for (const n of range(1, 10)) await cluster.publish(topic, { n });
    for (const tab of tabs) assert.deepEqual(await waitForEvents(tab.page, topic, 10), range(1, 10));
    await until('the server to count one connection for the five tabs', async () => (await openConnections()) === 1, { timeoutMs: 10000 });
    const leaders = tabs.filter((tab) => tab.sockets > 0);
    assert.equal(leaders.length, 1, `one tab opened a WebSocket (by tab: ${tabs.map((t) => t.sockets)})`);

    // The leader leaves while events keep coming.
    const [leader] = leaders;
    const rest = tabs.filter((tab) => tab !== leader);
    const publishing = (async () => {
      for (const n of range(11, 30)) {
        await cluster.publish(topic, { n });
        await sleep(50);
      }
    })();
    await sleep(120);
    await leader.page.close({ runBeforeUnload: true });
    await publishing;
    for (const tab of rest) {
      await waitForEvents(tab.page, topic, 30);
    }
    await sleep(300);
    for (const [i, tab] of rest.entries()) {
      assert.deepEqual(await tab.page.evaluate((t) => window.log.events[t], topic), range(1, 30), `tab ${i}: every event once, in order`);
      assert.deepEqual(tab.problems, []);
    }
    await until('one connection again after the hand-over', async () => (await openConnections()) === 1, { timeoutMs: 10000 });
    assert.equal(rest.filter((tab) => tab.sockets > 0).length, 1, 'one other tab took over the connection');
  } finally {
    await context.close();
  }
});
