// The web console at GET /: it renders, connects, shows a published event
// with its seq and latency, and resumes after a forced disconnect.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, uniqueTopic } from '../lib/cluster.js';
import { launchBrowser, artifactPath, watchPage } from '../lib/pages.js';
import { request } from '../lib/http.js';

let cluster;
let browser;

before(async () => {
  [cluster, browser] = await Promise.all([
    startCluster({ nodes: 1, env: { HERALD_HEARTBEAT_SECS: '2' } }),
    launchBrowser(),
  ]);
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
});

for (const transport of ['', 'sse', 'poll']) {
  const name = transport || 'automatic';
  test(`the console connects (${name}), shows published events and resumes after a forced disconnect`, async () => {
    const topic = uniqueTopic('console');
    const context = await browser.newContext({ viewport: { width: 1280, height: 760 } });
    const page = await context.newPage();
    const record = watchPage(page);
    try {
      await page.goto(`${cluster.url(0)}/`);
      assert.equal(await page.title(), 'Herald console');
      assert.equal(await page.locator('#dev-hint').isHidden(), true, 'no dev token outside --dev');
      await page.fill('#token', cluster.rootToken);
      await page.fill('#topics', topic);
      await page.selectOption('#transport-choice', transport);
      await page.click('#connect-button');
      await page.waitForSelector('#state[data-state="open"]', { timeout: 15000 });

      await page.fill('#publish-topic', topic);
      await page.fill('#publish-data', '{"hello": "console"}');
      await page.click('#publish-button');
      await page.waitForSelector('#publish-result:has-text("seq 1")', { timeout: 10000 });
      const first = page.locator('#events tr.event').first();
      await first.waitFor({ timeout: 10000 });
      const cells = await first.locator('td').allTextContents();
      assert.equal(cells[1], topic);
      assert.equal(cells[2], '1');
      assert.match(cells[3], /^-?\d+ ms$/, 'the latency is shown');
      assert.equal(cells[4], '{"hello":"console"}');

      await page.click('#drop-button');
      await page.waitForFunction(() => Number(document.getElementById('reconnects').textContent) >= 1, null, { timeout: 10000 });
      await page.waitForSelector('#state[data-state="open"]', { timeout: 20000 });
      // Published while the console may still be reconnecting: it resumes.
      await cluster.publish(topic, { after: 'the cut' });
      await page.waitForSelector('#events tr.event >> nth=1', { timeout: 15000 });
      const seqs = await page.locator('#events tr.event td:nth-child(3)').allTextContents();
      assert.deepEqual(seqs, ['2', '1'], 'newest first, nothing lost or repeated');
      assert.equal(await page.locator('#transport').textContent(), transport || 'websocket');
      await page.screenshot({ path: artifactPath(`console-${name}.png`), fullPage: true });
      assert.deepEqual(record.errors, []);
    } finally {
      await context.close();
    }
  });
}

test('the development token route is not there without --dev', async () => {
  const answer = await request(`${cluster.url(0)}/v1/dev/token`);
  assert.equal(answer.status, 404);
  assert.equal(answer.body.code, 'not_found');
});
