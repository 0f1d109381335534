// HS256 tokens with Herald's claims (docs/API.md "Token claims"), signed
// with the test cluster's secret.
import { createHmac, randomUUID } from 'node:crypto';

const b64url = (value) => Buffer.from(value).toString('base64url');

/**
 * Mints a token.
 * @param {string} secret the cluster's HS256 secret
 * @param {{sub?: string, subscribe?: string[], publish?: string[], admin?: boolean, ttlSecs?: number}} [claims]
 */
export function mint(secret, { sub = 'user', subscribe = ['>'], publish = [], admin = false, ttlSecs = 3600 } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify({
    sub, iat: now, exp: now + ttlSecs, jti: randomUUID(),
    herald: { subscribe, publish, admin },
  }));
  const signature = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}
