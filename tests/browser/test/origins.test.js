// Pages on other origins: an allowed one subscribes with a ticket and with
// a cookie; one that is not allowed is refused before any stream opens, and
// gets no CORS headers (so a sibling origin cannot ride the user's cookie).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, uniqueTopic } from '../lib/cluster.js';
import { startPageServer, launchBrowser, watchPage, waitInPage } from '../lib/pages.js';
import { request, upgradeHeaders } from '../lib/http.js';

let cluster;
let allowed; // http://localhost:P, listed in HERALD_ALLOWED_ORIGINS
let other; // http://localhost:P2, same site, not listed
let browser;
let herald; // http://localhost:Q: same site as both pages, so cookies go along

before(async () => {
  [allowed, other] = await Promise.all([startPageServer(), startPageServer()]);
  [cluster, browser] = await Promise.all([
    startCluster({ nodes: 1, env: { HERALD_ALLOWED_ORIGINS: allowed.localhost, HERALD_HEARTBEAT_SECS: '2' } }),
    launchBrowser(),
  ]);
  herald = `http://localhost:${cluster.nodes[0].port}`;
  allowed.heraldUrl = cluster.url(0);
  other.heraldUrl = cluster.url(0);
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
  await allowed?.close();
  await other?.close();
});

async function pageOn(origin, cookieToken) {
  const context = await browser.newContext();
  if (cookieToken) {
    await context.addCookies([{ name: 'herald_token', value: cookieToken, domain: 'localhost', path: '/' }]);
  }
  const page = await context.newPage();
  const record = watchPage(page);
  await page.goto(origin);
  return { context, page, record };
}

test('an allowed origin subscribes over SSE with a ticket it minted cross-origin', async () => {
  const topic = uniqueTopic('origin-ticket');
  for (const n of [1, 2, 3]) await cluster.publish(topic, { n });
  const { context, page, record } = await pageOn(allowed.localhost);
  try {
    const token = cluster.token({ subscribe: [topic] });
    const status = await page.evaluate(async ({ herald, topic, token }) => {
      const answer = await fetch(`${herald}/v1/tickets`, { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
      const { ticket } = await answer.json();
      window.got = [];
      const es = new EventSource(`${herald}/v1/sse?topic=${topic}&since=${topic}:0&ticket=${encodeURIComponent(ticket)}`);
      es.onmessage = (m) => window.got.push(JSON.parse(m.data).seq);
      return answer.status;
    }, { herald, topic, token });
    assert.equal(status, 200);
    await waitInPage(page, 'three events through the ticket', () => window.got.length >= 3);
    assert.deepEqual(await page.evaluate(() => window.got), [1, 2, 3], record.console.join('\n'));
  } finally {
    await context.close();
  }
});

test('an allowed origin subscribes with the session cookie: EventSource, WebSocket and a credentialed poll', async () => {
  const topic = uniqueTopic('origin-cookie');
  for (const n of [1, 2]) await cluster.publish(topic, { n });
  const { context, page, record } = await pageOn(allowed.localhost, cluster.token({ subscribe: [topic] }));
  try {
    await page.evaluate(({ herald, topic }) => {
      window.sse = [];
      window.ws = [];
      const es = new EventSource(`${herald}/v1/sse?topic=${topic}&since=${topic}:0`, { withCredentials: true });
      es.onmessage = (m) => window.sse.push(JSON.parse(m.data).seq);
      const ws = new WebSocket(`${herald.replace('http', 'ws')}/v1/ws`);
      ws.onopen = () => ws.send(JSON.stringify({ op: 'subscribe', topics: [topic], since: `${topic}:0` }));
      ws.onmessage = (m) => {
        const frame = JSON.parse(m.data);
        if (frame.op === 'event') window.ws.push(frame.seq);
      };
    }, { herald, topic });
    await waitInPage(page, 'two events on each of SSE and WebSocket', () => window.sse.length >= 2 && window.ws.length >= 2);
    const polled = await page.evaluate(async ({ herald, topic }) => {
      const answer = await fetch(`${herald}/v1/poll?topic=${topic}&since=${topic}:0`, { credentials: 'include' });
      return { status: answer.status, seqs: (await answer.json()).events.map((e) => e.seq) };
    }, { herald, topic });
    const seen = await page.evaluate(() => ({ sse: window.sse, ws: window.ws }));
    assert.deepEqual(seen, { sse: [1, 2], ws: [1, 2] }, record.console.join('\n'));
    assert.deepEqual(polled, { status: 200, seqs: [1, 2] });
  } finally {
    await context.close();
  }
});

test('an origin that is not allowed gets nothing through the browser, even with the cookie', async () => {
  const topic = uniqueTopic('origin-refused');
  await cluster.publish(topic, { n: 1 });
  const token = cluster.token({ subscribe: [topic] });
  const { context, page } = await pageOn(other.localhost, token);
  try {
    const outcome = await page.evaluate(async ({ herald, topic, token }) => {
      const result = {};
      try {
        await fetch(`${herald}/v1/tickets`, { method: 'POST', headers: { Authorization: `Bearer ${token}` } });
        result.ticket = 'answered';
      } catch (error) {
        result.ticket = error.name;
      }
      try {
        await fetch(`${herald}/v1/poll?topic=${topic}&since=${topic}:0`, { credentials: 'include' });
        result.poll = 'answered';
      } catch (error) {
        result.poll = error.name;
      }
      result.sse = await new Promise((resolve) => {
        const es = new EventSource(`${herald}/v1/sse?topic=${topic}&since=${topic}:0`, { withCredentials: true });
        es.onmessage = () => { es.close(); resolve('event'); };
        es.onerror = () => { const state = es.readyState; es.close(); resolve(state === EventSource.CLOSED ? 'closed' : 'retrying'); };
        setTimeout(() => { es.close(); resolve('still open after 5 s'); }, 5000);
      });
      result.ws = await new Promise((resolve) => {
        const ws = new WebSocket(`${herald.replace('http', 'ws')}/v1/ws`);
        ws.onopen = () => ws.send(JSON.stringify({ op: 'subscribe', topics: [topic], since: `${topic}:0` }));
        ws.onmessage = (m) => { if (JSON.parse(m.data).op === 'event') resolve('event'); };
        ws.onclose = (e) => resolve(`closed ${e.code}`);
        setTimeout(() => resolve('still open after 5 s'), 5000);
      });
      return result;
    }, { herald, topic, token });
    assert.deepEqual(outcome, { ticket: 'TypeError', poll: 'TypeError', sse: 'closed', ws: 'closed 1006' });
  } finally {
    await context.close();
  }
});

test('requests from an origin that is not allowed are 403 origin_not_allowed, with no CORS headers', async () => {
  const topic = uniqueTopic('origin-403');
  const token = cluster.token({ subscribe: [topic] });
  const origin = other.localhost;
  const base = cluster.url(0);
  const answers = {
    preflight: await request(`${base}/v1/tickets`, {
      method: 'OPTIONS',
      headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization' },
    }),
    ticket: await request(`${base}/v1/tickets`, { method: 'POST', headers: { origin, authorization: `Bearer ${token}` } }),
    sse: await request(`${base}/v1/sse?topic=${topic}`, { headers: { origin, cookie: `herald_token=${token}` } }),
    poll: await request(`${base}/v1/poll?topic=${topic}`, { headers: { origin, cookie: `herald_token=${token}` } }),
    ws: await request(`${base}/v1/ws`, { headers: upgradeHeaders({ origin, cookie: `herald_token=${token}` }) }),
  };
  for (const [what, answer] of Object.entries(answers)) {
    assert.equal(answer.headers['access-control-allow-origin'], undefined, `${what}: no CORS headers for a refused origin`);
    if (what === 'preflight') {
      assert.ok(answer.status >= 400, `${what}: a refused preflight (got ${answer.status})`);
      continue;
    }
    assert.equal(answer.status, 403, `${what}: ${JSON.stringify(answer.body)}`);
    assert.equal(answer.body.code, 'origin_not_allowed', what);
  }

  // The allowed origin, for contrast: a preflight that lets the page go on.
  const preflight = await request(`${base}/v1/tickets`, {
    method: 'OPTIONS',
    headers: { origin: allowed.localhost, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization' },
  });
  assert.equal(preflight.status, 204);
  assert.equal(preflight.headers['access-control-allow-origin'], allowed.localhost);
  assert.equal(preflight.headers['access-control-allow-credentials'], 'true');
  assert.match(preflight.headers['access-control-allow-headers'] || '', /authorization/i);
  assert.ok(Number(preflight.headers['access-control-max-age']) > 0);
});
