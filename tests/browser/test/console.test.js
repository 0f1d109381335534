// The web console at GET /: it renders, connects, shows a published event
// with its seq and latency, and resumes after a forced disconnect; with
// --dev, its debugging views: the frame log, each topic's position, the
// token decoder, the node's statistics and a topic's receipts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, uniqueTopic } from '../lib/cluster.js';
import { launchBrowser, artifactPath, watchPage } from '../lib/pages.js';
import { request } from '../lib/http.js';
import { until } from '../lib/wait.js';

let cluster;
/** A node started with --dev: the console fills in its admin token (sub "dev"). */
let devCluster;
let browser;

before(async () => {
  [cluster, devCluster, browser] = await Promise.all([
    startCluster({ nodes: 1, env: { HERALD_HEARTBEAT_SECS: '2' } }),
    startCluster({ nodes: 1, env: { HERALD_HEARTBEAT_SECS: '2', HERALD_DEV: 'true' } }),
    launchBrowser(),
  ]);
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
  await devCluster?.stop();
});

/** A page on the --dev node's console, its token filled in. */
async function openDevConsole() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const record = watchPage(page);
  await page.goto(`${devCluster.url(0)}/`);
  await page.waitForSelector('#dev-hint', { state: 'visible', timeout: 10000 });
  return { context, page, record };
}

/** Connects the console to `topic` (automatic transport) and waits until it is open. */
async function connect(page, topic, { ack = false } = {}) {
  await page.fill('#topics', topic);
  await page.setChecked('#ack', ack);
  await page.click('#connect-button');
  await page.waitForSelector('#state[data-state="open"]', { timeout: 15000 });
}

/** The text of the positions row of `topic`: [topic, last seq, resumes from, at]. */
const positionOf = (page, topic) => page.locator(`#positions tr[data-topic="${topic}"] td`).allTextContents();

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
      // The frame log shows the event as this transport carried it.
      const via = { '': 'ws', sse: 'sse', poll: 'http' }[transport];
      const carried = page.locator(`#frames tr[data-dir="in"]:has(td:text-is("${via}"))`, { hasText: '"hello":"console"' });
      await carried.first().waitFor({ timeout: 10000 });
      const frame = await carried.first().locator('td.frame').textContent();
      assert.match(frame, { '': /^\{"op":"event",/, sse: /^id: [^\n]+:1\ndata: \{/, poll: /^200 GET \/v1\/poll\n\{"/ }[transport]);
      assert.ok(frame.includes(`"topic":"${topic}","seq":1`), frame);

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

test('the frame log shows the frames of a received event, filtered and paused; the position and receipts follow', async () => {
  const topic = uniqueTopic('console.debug');
  const { context, page, record } = await openDevConsole();
  try {
    await connect(page, topic, { ack: true });
    // A live subscription resumes from where the server said it starts.
    await until('the live position to be known', async () => (await positionOf(page, topic))[2] === `${topic}:0`, { timeoutMs: 10000 });
    assert.deepEqual((await positionOf(page, topic)).slice(0, 3), [topic, '–', `${topic}:0`]);
    await page.locator('#frames tr[data-dir="out"]', { hasText: '"op":"subscribe"' }).first().waitFor({ timeout: 10000 });

    await page.fill('#publish-topic', topic);
    await page.fill('#publish-data', '{"debug": 1}');
    await page.click('#publish-button');
    await page.waitForSelector('#publish-result:has-text("seq 1")', { timeout: 10000 });
    const eventFrames = page.locator('#frames tr[data-dir="in"]', { hasText: '"op":"event"' });
    await eventFrames.first().waitFor({ timeout: 10000 });
    const [time, direction, via, text] = await eventFrames.first().locator('td').allTextContents();
    assert.match(time, /^\d\d:\d\d:\d\d\.\d{3}$/);
    assert.match(direction, /received/);
    assert.equal(via, 'ws');
    const frame = JSON.parse(text);
    assert.equal(frame.topic, topic);
    assert.equal(frame.seq, 1);
    assert.deepEqual(frame.data, { debug: 1 });

    // The position follows the event.
    await until('the position to reach seq 1', async () => (await positionOf(page, topic))[1] === '1', { timeoutMs: 10000 });
    assert.equal((await positionOf(page, topic))[2], `${topic}:1`);

    // Filtered: only the frames that hold the text, in the chosen direction.
    await page.fill('#frames-filter', '"op":"event"');
    assert.equal(await page.locator('#frames tr').count(), 1);
    await page.selectOption('#frames-direction', 'out');
    assert.equal(await page.locator('#frames tr').count(), 0);
    await page.selectOption('#frames-direction', 'in');
    assert.equal(await page.locator('#frames tr').count(), 1);

    // Paused: frames are kept but not shown until resumed.
    await page.click('#frames-pause');
    await devCluster.publish(topic, { debug: 2 });
    await page.waitForSelector('#events tr.event >> nth=1', { timeout: 10000 });
    await page.waitForSelector('#frames-status:has-text("paused")', { timeout: 5000 });
    assert.equal(await page.locator('#frames tr').count(), 1, 'nothing new is shown while paused');
    await page.click('#frames-pause');
    await until('the second event frame after resuming', async () => (await page.locator('#frames tr').count()) === 2, { timeoutMs: 5000 });
    assert.match(await page.locator('#frames tr td.frame').first().textContent(), /"seq":2/, 'newest first');
    await until('the position to reach seq 2', async () => (await positionOf(page, topic))[1] === '2', { timeoutMs: 10000 });

    // Receipts: the client acknowledged both events (ack: 'auto'); the
    // server writes them within one flush interval.
    await page.fill('#receipts-topic', topic);
    const receipt = page.locator('#receipts-rows tr[data-sub="dev"]');
    await until('the receipt of seq 2', async () => {
      await page.click('#receipts-refresh');
      await page.waitForSelector('#receipts-message:not(:has-text("Loading"))', { timeout: 5000 });
      return (await receipt.count()) === 1 && (await receipt.locator('td.seq').textContent()) === '2';
    }, { timeoutMs: 10000, everyMs: 200 });
    assert.deepEqual(await receipt.locator('td').allTextContents().then((cells) => cells.slice(0, 3)), ['dev', '2', '0']);
    assert.equal(await page.locator('#receipts-head').textContent(), '2');
    await page.screenshot({ path: artifactPath('console-debug.png'), fullPage: true });
    assert.deepEqual(record.errors, []);
  } finally {
    await context.close();
  }
});

test('the token decoder shows the --dev token\'s subject and expiry, says it does not verify, and escapes what it shows', async () => {
  const { context, page, record } = await openDevConsole();
  try {
    await page.click('#jwt-use');
    await page.waitForSelector('#jwt-out', { state: 'visible', timeout: 5000 });
    const token = await page.inputValue('#token');
    const claims = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString('utf8'));
    assert.equal(await page.locator('#jwt-sub').textContent(), 'dev');
    assert.ok((await page.locator('#jwt-exp').textContent()).startsWith(new Date(claims.exp * 1000).toISOString()));
    // The --dev token lives 24 hours from the node's start, a few minutes ago.
    assert.match(await page.locator('#jwt-left').textContent(), /^23 h \d+ min \d+ s$/);
    assert.equal(await page.locator('#jwt-admin').textContent(), 'yes');
    assert.equal(await page.locator('#jwt-subscribe').textContent(), '>');
    assert.match(await page.locator('#jwt-unverified').textContent(), /signature is not verified/);

    const markup = '<img src=x onerror="window.injected=1">';
    await page.fill('#jwt', devCluster.token({ sub: markup, ttlSecs: -5 }));
    await page.waitForFunction((sub) => document.getElementById('jwt-sub').textContent === sub, markup, { timeout: 5000 });
    assert.equal(await page.locator('#jwt-out img').count(), 0, 'shown as text, not markup');
    assert.match(await page.locator('#jwt-left').textContent(), /^expired \d+ s ago$/);
    assert.equal(await page.locator('#jwt-admin').textContent(), 'no');

    await page.fill('#jwt', 'not-a-token');
    await page.waitForSelector('#jwt-message[data-kind="error"]:has-text("Not a JWT")', { timeout: 5000 });
    assert.equal(await page.locator('#jwt-out').isHidden(), true);
    assert.equal(await page.evaluate(() => window.injected), undefined);
    assert.deepEqual(record.errors, []);
  } finally {
    await context.close();
  }
});

test('the node statistics render with the --dev admin token, and a token that is not admin is told so, for them and for receipts', async () => {
  const topic = uniqueTopic('console.stats');
  const { context, page, record } = await openDevConsole();
  try {
    await connect(page, topic);
    await page.click('#stats-refresh');
    await page.waitForSelector('#stats-out', { state: 'visible', timeout: 10000 });
    assert.ok(Number(await page.locator('#stats-ws').textContent()) >= 1, 'this console\'s WebSocket is counted');
    assert.equal(await page.locator('#stats-store').textContent(), 'sqlite');
    assert.equal(await page.locator('#stats-draining').textContent(), 'no');
    const busiest = await page.locator('#stats-busiest td:first-child').allTextContents();
    assert.ok(busiest.includes(topic), `${topic} is among ${busiest}`);

    await page.fill('#server-token', devCluster.token({ sub: 'reader', admin: false }));
    await page.click('#stats-refresh');
    await page.waitForSelector('#stats-message[data-kind="error"]:has-text("not an admin token")', { timeout: 10000 });
    assert.equal(await page.locator('#stats-out').isHidden(), true);
    // Nor may it read receipts of a topic it may not publish on.
    await page.fill('#receipts-topic', topic);
    await page.click('#receipts-refresh');
    await page.waitForSelector('#receipts-message[data-kind="error"]:has-text("may not read the receipts")', { timeout: 10000 });
    assert.equal(await page.locator('#receipts-out').isHidden(), true);
    assert.deepEqual(record.errors, []);
  } finally {
    await context.close();
  }
});

test('the frame log keeps the last 500 frames, newest first', async () => {
  const topic = uniqueTopic('console.bound');
  const { context, page, record } = await openDevConsole();
  try {
    await connect(page, topic);
    const total = 520;
    for (let i = 1; i <= total; i += 1) await devCluster.publish(topic, { i });
    await page.waitForFunction((n) => Number(document.getElementById('count').textContent) === n, total, { timeout: 30000 });
    await page.waitForSelector('#frames-status:has-text("500 frames kept")', { timeout: 5000 });
    assert.equal(await page.locator('#frames tr').count(), 500);
    const newest = JSON.parse(await page.locator('#frames tr td.frame').first().textContent());
    assert.equal(newest.seq, total);
    const oldest = JSON.parse(await page.locator('#frames tr td.frame').last().textContent());
    assert.equal(oldest.seq, total - 499, 'the 500 newest frames, all events by now');
    assert.deepEqual(record.errors, []);
  } finally {
    await context.close();
  }
});
