/**
 * Herald's browser client, Web Push part: what `herald.registerPush()`
 * loads on first use (the core, client.js, stays within its size budget).
 * Served by the binary next to the client, at `/client-push.js`.
 */
import { HeraldError } from './client.js';

/**
 * Subscribes `registration.pushManager` with the server's VAPID key (a
 * subscription made with another key is replaced) and registers it as a
 * device for `topics` (`POST /v1/devices`): resolves to the device.
 * @param {import('./client.js').Herald} h
 * @param {ServiceWorkerRegistration} registration
 * @param {{ topics: string[] }} options
 * @param {(res: Response) => Promise<HeraldError>} problem
 */
export async function registerPush(h, registration, { topics } = {}, problem) {
  const pm = registration && registration.pushManager;
  if (!pm) throw new HeraldError('push_unsupported', 'no Push API here (registration.pushManager)');
  let res = await h._fetch(h.url + '/v1/push/vapid');
  if (!res.ok) throw await problem(res);
  const k = String((await res.json()).public_key).replace(/-/g, '+').replace(/_/g, '/');
  const key = Uint8Array.from(globalThis.atob(k + '==='.slice((k.length + 3) % 4)), (c) => c.charCodeAt(0));
  let sub = await pm.getSubscription();
  const had = sub && sub.options && sub.options.applicationServerKey;
  if (sub && !(had && String(new Uint8Array(had)) === String(key))) {
    await sub.unsubscribe();
    sub = null;
  }
  sub ||= await pm.subscribe({ userVisibleOnly: true, applicationServerKey: key });
  const init = await h._init();
  init.headers['Content-Type'] = 'application/json';
  const body = JSON.stringify({ platform: 'webpush', subscription: sub.toJSON(), topics });
  res = await h._fetch(h.url + '/v1/devices', { ...init, method: 'POST', body });
  if (!res.ok) throw await problem(res);
  return res.json();
}
