// A TCP proxy in front of Herald that understands just enough HTTP to tell a
// WebSocket upgrade, an SSE stream and a poll apart, so a test can play the
// middleboxes browsers meet: one that refuses or swallows WebSocket
// upgrades, one that blocks SSE, one that cuts connections mid-stream, a
// load balancer that moves to another node, and a broken server that
// answers garbage.
//
// Every request other than an upgrade is sent upstream with
// `Connection: close`, so one TCP connection carries one request and can be
// classified (and cut) on its own.
import net from 'node:net';
import { createHash } from 'node:crypto';

const MAX_HEAD_BYTES = 64 * 1024;

/** The kind of a request: 'ws', 'sse', 'poll' or 'http'. */
function kindOf(path, headers) {
  if ((headers.upgrade || '').toLowerCase() === 'websocket') return 'ws';
  if (path.startsWith('/v1/sse')) return 'sse';
  if (path.startsWith('/v1/poll')) return 'poll';
  return 'http';
}

function parseHead(text) {
  const [requestLine, ...lines] = text.split('\r\n');
  const [method, path] = requestLine.split(' ');
  const headers = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return { method, path: path || '/', requestLine, lines, headers };
}

/** One server-to-client WebSocket text frame (unmasked). */
export function wsTextFrame(text) {
  const payload = Buffer.from(text);
  let header;
  if (payload.length < 126) {
    header = Buffer.from([0x81, payload.length]);
  } else {
    header = Buffer.alloc(4);
    header[0] = 0x81;
    header[1] = 126;
    header.writeUInt16BE(payload.length, 2);
  }
  return Buffer.concat([header, payload]);
}

/** Answers a WebSocket handshake with 101 itself, as a broken server would. */
function acceptUpgrade(socket, headers) {
  const accept = createHash('sha1').update(`${headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
}

/** CORS headers that let a page of any origin read a broken answer. */
function corsFor(headers) {
  return headers.origin
    ? `Access-Control-Allow-Origin: ${headers.origin}\r\nAccess-Control-Allow-Credentials: true\r\n`
    : '';
}

/** What a broken server sends for each kind of request. */
const GARBAGE = {
  ws(socket, headers) {
    acceptUpgrade(socket, headers);
    for (const text of ['not json at all', '{"op":', '{"op":"event","topic":7,"seq":"x"}', '[1,2,3]', '{"op":"no-such-op"}', 'null']) {
      socket.write(wsTextFrame(text));
    }
    setTimeout(() => socket.destroy(), 100 + Math.random() * 300);
  },
  sse(socket, headers) {
    socket.write(`HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n${corsFor(headers)}Connection: close\r\n\r\n` +
      'data: not json\n\nevent: reset\ndata: {"topic":\n\ndata: {"topic":"x","seq":"nope"}\n\n\x00\xff garbage\n\n');
    setTimeout(() => socket.destroy(), 100 + Math.random() * 300);
  },
  poll(socket, headers) {
    const body = Math.random() < 0.5 ? '<html>502 bad gateway</html>' : '{"events":"nope","cursor":12}';
    socket.end(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n${corsFor(headers)}Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  },
};

export class Proxy {
  /** @param {string} target base URL of the first upstream (http://127.0.0.1:PORT) */
  constructor(target) {
    this.setTarget(target);
    /** What to do with each kind: 'pass', 'refuse' (502), 'swallow' (hold, never answer) or 'garbage'. */
    this.mode = { ws: 'pass', sse: 'pass', poll: 'pass', http: 'pass' };
    /** Every request seen: {kind, path, mode, at}. */
    this.seen = [];
    /** Open connections: {kind, path, client, upstream, target}. */
    this.open = new Set();
    this.server = net.createServer((socket) => this.accept(socket));
  }

  /** Routes new connections to `target` (open ones stay where they are). */
  setTarget(target) {
    this.setTargets([target]);
  }

  /**
   * Routes new connections to `targets` in turn, starting with the first:
   * a load balancer that has not yet noticed that one of them is draining.
   */
  setTargets(targets) {
    this.targets = targets.map((target) => {
      const url = new URL(target);
      return { host: url.hostname, port: Number(url.port) };
    });
    this.next = 0;
  }

  /** The upstream for the next connection. */
  pickTarget() {
    const target = this.targets[this.next % this.targets.length];
    this.next += 1;
    return target;
  }

  listen(host = '127.0.0.1') {
    return new Promise((resolve) => this.server.listen(0, host, () => {
      this.port = this.server.address().port;
      this.url = `http://${host}:${this.port}`;
      resolve(this);
    }));
  }

  /** Requests of `kind` seen so far (with `mode` if given). */
  count(kind, mode) {
    return this.seen.filter((r) => r.kind === kind && (mode === undefined || r.mode === mode)).length;
  }

  /** Open connections of `kind` (any if omitted). */
  openCount(kind) {
    return [...this.open].filter((c) => kind === undefined || c.kind === kind).length;
  }

  /** Cuts every open connection (of `kind`, if given) mid-stream; returns how many. */
  cut(kind) {
    let n = 0;
    for (const connection of [...this.open]) {
      if (kind !== undefined && connection.kind !== kind) continue;
      connection.client.destroy();
      connection.upstream?.destroy();
      this.open.delete(connection);
      n += 1;
    }
    return n;
  }

  accept(client) {
    client.on('error', () => {});
    let buffered = Buffer.alloc(0);
    const onData = (chunk) => {
      buffered = Buffer.concat([buffered, chunk]);
      const end = buffered.indexOf('\r\n\r\n');
      if (end < 0) {
        if (buffered.length > MAX_HEAD_BYTES) client.destroy();
        return;
      }
      client.off('data', onData);
      client.pause();
      this.route(client, parseHead(buffered.subarray(0, end).toString('latin1')), buffered.subarray(end + 4));
    };
    client.on('data', onData);
  }

  route(client, head, rest) {
    const kind = kindOf(head.path, head.headers);
    const mode = this.mode[kind] || 'pass';
    this.seen.push({ kind, path: head.path, mode, at: Date.now() });
    const connection = { kind, path: head.path, client, upstream: null };
    this.open.add(connection);
    client.on('close', () => {
      this.open.delete(connection);
      connection.upstream?.destroy();
    });
    if (mode === 'refuse') {
      client.end('HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 7\r\nConnection: close\r\n\r\nblocked');
      return;
    }
    if (mode === 'swallow') {
      client.resume(); // read and ignore whatever comes; never answer
      return;
    }
    if (mode === 'garbage') {
      client.resume();
      if (GARBAGE[kind]) GARBAGE[kind](client, head.headers);
      else client.destroy();
      return;
    }
    const lines = kind === 'ws'
      ? head.lines
      : [...head.lines.filter((l) => !/^(connection|keep-alive):/i.test(l)), 'Connection: close'];
    // Like a load balancer's passive health check: an upstream that refuses
    // the TCP connection (a node that has exited) is skipped for the next.
    const connect = (attempt) => {
      const target = this.pickTarget();
      connection.target = `http://${target.host}:${target.port}`;
      const upstream = net.connect(target.port, target.host);
      connection.upstream = upstream;
      let connected = false;
      upstream.on('error', (error) => {
        if (!connected && error.code === 'ECONNREFUSED' && attempt < this.targets.length && !client.destroyed) {
          upstream.removeAllListeners('close');
          connect(attempt + 1);
        } else {
          client.destroy();
        }
      });
      upstream.on('close', () => client.destroy());
      upstream.on('connect', () => {
        connected = true;
        upstream.write(`${[head.requestLine, ...lines].join('\r\n')}\r\n\r\n`);
        if (rest.length) upstream.write(rest);
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
    };
    connect(1);
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** Starts a proxy to `target` on 127.0.0.1. */
export function startProxy(target) {
  return new Proxy(target).listen();
}
