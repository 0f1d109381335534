// `registerPush`: the client subscribes a service worker registration's
// pushManager with the server's VAPID key and registers the subscription as
// a device; an event nobody acknowledges then reaches that subscription as
// an encrypted Web Push, delivered by web-push-testing (a real push
// service, run locally, which checks VAPID and decrypts RFC 8291).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { ROOT, binary, mint, publish, startHerald, uniqueTopic, withTimeout } from './helpers.mjs';

delete globalThis.BroadcastChannel;
const { Herald, HeraldError } = await import('../../../services/herald/static/client.js');

const WAIT_MS = 15_000;

/** web-push-testing on a free port of 127.0.0.1 (tests/push/serve.js). */
async function startPushService() {
  const child = spawn(process.execPath, [`${ROOT}tests/push/serve.js`, '0'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout });
  const port = await withTimeout(
    new Promise((resolve, reject) => {
      lines.on('line', (l) => l.startsWith('listening ') && resolve(Number(l.slice(10))));
      child.once('exit', (code) => reject(new Error(`the push service exited with ${code}`)));
    }),
    WAIT_MS,
    'the push service did not start',
  );
  const call = async (path, body) => {
    const res = await fetch(`http://127.0.0.1:${port}${path}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    assert.equal(res.status, 200, `${path}: ${res.status}`);
    return (await res.json()).data;
  };
  return { child, call };
}

/**
 * A ServiceWorkerRegistration as far as registerPush uses it: its
 * pushManager makes real subscriptions at the push service, as a browser's
 * does at its vendor's.
 */
function registration(service) {
  const made = [];
  let current = null;
  const pushManager = {
    async getSubscription() {
      return current;
    },
    async subscribe(options) {
      assert.equal(options.userVisibleOnly, true);
      assert.ok(options.applicationServerKey instanceof Uint8Array, 'the key is passed as bytes');
      const applicationServerKey = Buffer.from(options.applicationServerKey).toString('base64url');
      const data = await service.call('/subscribe', { applicationServerKey, userVisibleOnly: 'true' });
      const sub = {
        options: { userVisibleOnly: true, applicationServerKey: options.applicationServerKey.buffer },
        hash: data.clientHash,
        toJSON: () => ({ endpoint: data.endpoint, keys: data.keys }),
        unsubscribe: async () => ((current = null), true),
      };
      made.push(sub);
      return (current = sub);
    },
  };
  return { pushManager, made };
}

let server;
let service;
before(async () => {
  const keys = execFileSync(binary(), ['keys', 'vapid'], { encoding: 'utf8' });
  const privateKey = keys.match(/HERALD_VAPID_PRIVATE_KEY=(\S+)/)[1];
  [server, service] = await Promise.all([
    startHerald({
      env: {
        HERALD_VAPID_PRIVATE_KEY: privateKey,
        HERALD_VAPID_SUBJECT: 'mailto:ops@example.com',
        HERALD_PUSH_DELAY_SECS: '1',
        HERALD_PUSH_POLL_MS: '50',
        HERALD_WEBPUSH_ALLOW_HTTP: 'true',
      },
    }),
    startPushService(),
  ]);
});
after(() => {
  server?.stop();
  service?.child.kill();
});

describe('registerPush', () => {
  test('registers the browser and an unacknowledged event arrives as a decrypted push', async () => {
    const token = mint({ sub: 'carol', subscribe: ['push.{sub}.>'] });
    const h = new Herald(server.url, { token, share: false });
    const reg = registration(service);
    try {
      const device = await h.registerPush(reg, { topics: ['push.{sub}.>'] });
      assert.match(device.id, /^d-/);
      assert.equal(device.platform, 'webpush');
      assert.deepEqual(device.topics, ['push.carol.>']);

      // Registered again: the subscription is reused and so is the device.
      const again = await h.registerPush(reg, { topics: ['push.{sub}.>'] });
      assert.equal(again.id, device.id);
      assert.equal(reg.made.length, 1, 'one subscription at the push service');

      const topic = uniqueTopic('push.carol');
      await publish(server, topic, [{ n: 1 }]);
      const deadline = Date.now() + WAIT_MS;
      let messages = [];
      while (!messages.length) {
        assert.ok(Date.now() < deadline, `no push within ${WAIT_MS} ms`);
        await new Promise((r) => setTimeout(r, 50));
        messages = (await service.call('/get-notifications', { clientHash: reg.made[0].hash })).messages;
      }
      const push = JSON.parse(messages[0]);
      assert.equal(push.topic, topic);
      assert.equal(push.seq, 1);
    } finally {
      h.close();
    }
  });

  test('a topic outside the token grants is refused with the server code and nothing is stored', async () => {
    const token = mint({ sub: 'dave', subscribe: ['push.{sub}.>'] });
    const h = new Herald(server.url, { token, share: false });
    try {
      await assert.rejects(h.registerPush(registration(service), { topics: ['push.erin.>'] }), (e) => {
        assert.ok(e instanceof HeraldError);
        assert.equal(e.code, 'forbidden');
        assert.equal(e.status, 403);
        return true;
      });
      const res = await fetch(`${server.url}/v1/devices`, { headers: { Authorization: `Bearer ${token}` } });
      assert.deepEqual((await res.json()).devices, []);
    } finally {
      h.close();
    }
  });

  test('a browser without the Push API gets push_unsupported', async () => {
    const h = new Herald(server.url, { token: mint({ sub: 'frank' }), share: false });
    try {
      await assert.rejects(h.registerPush({}, { topics: ['push.frank.>'] }), { code: 'push_unsupported' });
    } finally {
      h.close();
    }
  });
});
