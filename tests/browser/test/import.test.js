// A page on another origin imports the client straight from Herald
// (`import ... from 'http://herald/client.js'`): the module answers with
// `Access-Control-Allow-Origin: *`, so the browser runs it, and the page
// receives events with it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, uniqueTopic } from '../lib/cluster.js';
import { startPageServer, launchBrowser, watchPage, waitInPage } from '../lib/pages.js';

let cluster;
let pages;
let browser;

before(async () => {
  pages = await startPageServer();
  [cluster, browser] = await Promise.all([
    startCluster({ nodes: 1, env: { HERALD_ALLOWED_ORIGINS: pages.loopback } }),
    launchBrowser(),
  ]);
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
  await pages?.close();
});

test('a page on another origin imports /client.js from Herald and receives an event', async () => {
  const topic = uniqueTopic('import');
  const herald = cluster.url(0);
  assert.notEqual(new URL(herald).origin, pages.loopback, 'the page is on another origin');
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    const record = watchPage(page);
    const scripts = [];
    page.on('response', (r) => r.url().endsWith('/client.js') && scripts.push({ encoding: r.headers()['content-encoding'], cors: r.headers()['access-control-allow-origin'] }));
    await page.goto(pages.loopback);
    const token = cluster.token({ subscribe: [topic] });
    await page.evaluate(async ({ herald, topic, token }) => {
      window.got = [];
      window.errors = [];
      const { Herald } = await import(`${herald}/client.js`);
      const h = new Herald(herald, { token });
      h.on('error', (e) => window.errors.push(e.code));
      h.subscribe(topic, (e) => window.got.push(e.seq), { since: 0 });
    }, { herald, topic, token });
    await cluster.publish(topic, { n: 1 });
    await waitInPage(page, 'the event', () => window.got.length >= 1);
    assert.deepEqual(await page.evaluate(() => window.got), [1]);
    assert.deepEqual(scripts, [{ encoding: 'gzip', cors: '*' }], 'served gzipped, for any origin');
    assert.deepEqual(record.errors, []);
  } finally {
    await context.close();
  }
});
