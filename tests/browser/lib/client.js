// Pages that run Herald's client library (the /client.js a node serves) and
// record what it reports, for the tests to wait on and assert.

/**
 * Opens a page at `pageUrl` (an origin that serves /client.js), creates
 * `new Herald(heraldUrl, options)` there as `window.h`, and records into
 * `window.log`: events per topic (`events[topic]` = seqs), `resets`,
 * `errors` ({code, message}), `states`, `subErrors` (per-subscription
 * onError). With `getToken` (a Node function), the page's `getToken` calls
 * it and the calls are counted in `log.tokenCalls`.
 */
export async function openClient(context, pageUrl, heraldUrl, options = {}, { getToken } = {}) {
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`pageerror: ${error}`));
  if (getToken) await page.exposeFunction('nodeGetToken', getToken);
  await page.goto(pageUrl);
  await page.evaluate(async ({ heraldUrl, options, withGetToken }) => {
    const { Herald, default: Default } = await import('/client.js');
    if (Default !== Herald) throw new Error('the default export is not Herald');
    const log = { events: {}, resets: [], errors: [], states: [], subErrors: [], tokenCalls: 0 };
    window.log = log;
    if (withGetToken) {
      options.getToken = async () => {
        log.tokenCalls += 1;
        return window.nodeGetToken();
      };
    }
    const h = new Herald(heraldUrl, options);
    h.on('state', (s) => log.states.push(s));
    h.on('reset', (r) => log.resets.push(r));
    h.on('error', (e) => log.errors.push({ code: e.code, message: e.message }));
    window.h = h;
    window.subs = {};
    window.sub = (topic, since, extra = {}) => {
      log.events[topic] = [];
      window.subs[topic] = h.subscribe(topic, (e) => log.events[topic].push(e.seq), {
        since,
        onReset: (r) => log.resets.push({ ...r, viaSubscription: true }),
        onError: (e) => log.subErrors.push({ topic, code: e.code, message: e.message }),
        ...extra,
      });
    };
  }, { heraldUrl, options, withGetToken: Boolean(getToken) });
  return { page, problems };
}

/** Subscribes the page's client to `topic` from `since` (seq or cursor). */
export function subscribe(page, topic, since) {
  return page.evaluate(({ topic, since }) => window.sub(topic, since), { topic, since });
}

/** Waits until the page has received `count` events of `topic`; returns the seqs. */
export async function waitForEvents(page, topic, count, timeoutMs = 20000) {
  try {
    await page.waitForFunction(({ topic, count }) => (window.log.events[topic] || []).length >= count,
      { topic, count }, { timeout: timeoutMs, polling: 50 });
  } catch (error) {
    const log = await page.evaluate(() => window.log).catch(() => null);
    throw new Error(`${error.message}\nclient log: ${JSON.stringify(log)}`);
  }
  return page.evaluate((topic) => window.log.events[topic], topic);
}

/** The page's log. */
export function clientLog(page) {
  return page.evaluate(() => ({ ...window.log, transport: window.h.transport, state: window.h.state }));
}

export const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/**
 * Waits until `predicate(log)` holds for the page's client log; the
 * failure message carries the last log seen.
 */
export async function waitForLog(page, what, predicate, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  let log;
  for (;;) {
    log = await clientLog(page);
    if (predicate(log)) return log;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; client log: ${JSON.stringify(log)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
