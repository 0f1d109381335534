// Acknowledgments in a real browser: a page with `ack: 'auto'` acknowledges
// what its handlers processed; a "second device" (a fresh browser context:
// no storage, no cursor) of the same subscriber resumes right after it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, uniqueTopic } from '../lib/cluster.js';
import { launchBrowser } from '../lib/pages.js';
import { openClient, subscribe, waitForEvents, clientLog, range } from '../lib/client.js';
import { until } from '../lib/wait.js';

let cluster;
let browser;

before(async () => {
  [cluster, browser] = await Promise.all([
    startCluster({ nodes: 1, env: { HERALD_ACK_FLUSH_MS: '50' } }),
    launchBrowser(),
  ]);
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
});

for (const transport of ['websocket', 'sse', 'poll']) {
  test(`${transport}: ack 'auto' lets a second device resume after what the first processed`, async () => {
    const topic = uniqueTopic(`acks-${transport}`);
    const sub = `browser-${transport}`;
    const options = { token: cluster.token({ sub, subscribe: [topic] }), transports: [transport], ack: 'auto' };
    for (const n of range(1, 5)) await cluster.publish(topic, { n });

    const firstDevice = await browser.newContext();
    const secondDevice = await browser.newContext();
    try {
      const first = await openClient(firstDevice, `${cluster.url(0)}/healthz`, cluster.url(0), options);
      await subscribe(first.page, topic, 0);
      assert.deepEqual(await waitForEvents(first.page, topic, 5), range(1, 5));
      await until(`${sub} acknowledged 5`, async () => (await cluster.acked(topic, sub)) === 5);
      await first.page.close();

      for (const n of range(6, 10)) await cluster.publish(topic, { n });
      const second = await openClient(secondDevice, `${cluster.url(0)}/healthz`, cluster.url(0), options);
      await subscribe(second.page, topic, undefined);
      assert.deepEqual(await waitForEvents(second.page, topic, 5), range(6, 10));
      await until(`${sub} acknowledged 10`, async () => (await cluster.acked(topic, sub)) === 10);
      const log = await clientLog(second.page);
      assert.deepEqual(log.events[topic], range(6, 10));
      assert.deepEqual(log.errors, []);
      assert.deepEqual([...first.problems, ...second.problems], []);
    } finally {
      await firstDevice.close();
      await secondDevice.close();
    }
  });
}
