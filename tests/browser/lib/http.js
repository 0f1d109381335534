// Raw HTTP requests from Node with any headers (Origin included), for the
// checks a browser hides from page code: status, problem code, CORS headers.
import http from 'node:http';

/**
 * Sends one request; resolves with {status, headers, body} (body parsed as
 * JSON when it is), or with {status: 101, upgraded: true} for an accepted
 * upgrade. Times out after 10 s.
 */
export function request(url, { method = 'GET', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, timeout: 10000 }, (res) => {
      const chunks = [];
      const isStream = (res.headers['content-type'] || '').startsWith('text/event-stream');
      res.on('data', (chunk) => {
        chunks.push(chunk);
        if (isStream) res.destroy(); // enough: the status and headers are known
      });
      const done = () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed = text;
        try { parsed = JSON.parse(text); } catch { /* not JSON */ }
        resolve({ status: res.statusCode, headers: res.headers, body: parsed });
      };
      res.on('end', done);
      res.on('close', done);
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode, headers: res.headers, upgraded: true });
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url} took over 10 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** The headers of a WebSocket upgrade request. */
export function upgradeHeaders(extra = {}) {
  return {
    connection: 'Upgrade',
    upgrade: 'websocket',
    'sec-websocket-version': '13',
    'sec-websocket-key': Buffer.from('0123456789abcdef').toString('base64'),
    ...extra,
  };
}
