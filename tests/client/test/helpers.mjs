// Shared by the client tests: a real `herald serve` process on a private
// SQLite file, tokens minted with its key, publishing, a TCP proxy that can
// cut connections or refuse some requests, and waiting with deadlines.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync } from 'node:fs';
import net from 'node:net';
import { Transform } from 'node:stream';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
/** The HS256 key every test server is started with. */
export const SECRET = 'herald-client-tests-secret-0123456789';
const START_TIMEOUT_MS = 30_000;

export function binary() {
  const path = process.env.HERALD_BIN || join(ROOT, 'target/debug/herald');
  if (!existsSync(path)) throw new Error(`no herald binary at ${path}: run cargo build -p herald (or set HERALD_BIN)`);
  return path;
}

export function tempDb() {
  return join(mkdtempSync(join(tmpdir(), 'herald-client-')), 'herald.db');
}

/**
 * Starts `herald serve --dev` on 127.0.0.1:0 and reads, from its standard
 * output, the address it bound and the development admin token it prints.
 */
export async function startHerald({ db = tempDb(), env = {} } = {}) {
  const child = spawn(binary(), ['serve', '--dev', '--listen', '127.0.0.1:0', '--database-url', `sqlite://${db}`], {
    env: { ...process.env, HERALD_JWT_SECRET: SECRET, RUST_LOG: 'warn', HERALD_LOG_FORMAT: 'text', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const started = new Promise((resolve, reject) => {
    let out = '';
    let token;
    child.stdout.on('data', (d) => {
      out += d;
      token ||= out.match(/export TOKEN=(\S+)/)?.[1];
      const addr = out.match(/listening on http:\/\/(\S+)/)?.[1];
      if (addr && token) resolve({ url: `http://${addr}`, token });
    });
    exited.then((code) => reject(new Error(`herald exited with ${code} before listening: ${stderr}`)));
  });
  const { url, token } = await withTimeout(started, START_TIMEOUT_MS, 'herald did not start');
  return {
    url,
    port: Number(new URL(url).port),
    token,
    db,
    child,
    async stop() {
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** An HS256 token signed with SECRET. */
export function mint({ sub = 'tester', ttlSecs = 3600, subscribe = ['>'], publish = [], jti } = {}) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const iat = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, iat, exp: iat + ttlSecs, jti, herald: { subscribe, publish } })}`;
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

/** Publishes events (one request), answering their seqs. */
export async function publish(server, topic, datas) {
  const body = datas.map((data) => ({ topic, data }));
  const res = await fetch(`${server.url}/v1/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${server.token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (res.status !== 201) throw new Error(`publish answered ${res.status}: ${await res.text()}`);
  return (await res.json()).map((a) => a.seq);
}

/** Revokes one token by its `jti`, across the server. */
export async function revoke(server, jti) {
  const res = await fetch(`${server.url}/v1/admin/revoke`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${server.token}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ jti }),
  });
  if (res.status !== 200) throw new Error(`revoke answered ${res.status}: ${await res.text()}`);
}

let topicCounter = 0;
export function uniqueTopic(prefix = 't') {
  return `${prefix}.${process.pid}.${Date.now().toString(36)}.${topicCounter++}`;
}

export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms))),
  ]).finally(() => clearTimeout(timer));
}

/** Resolves once `check()` is true, polling every 20 ms; rejects after `ms`. */
export async function until(check, ms, what) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${typeof what === 'function' ? what() : what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A TCP proxy in front of a server: `cut()` breaks every open connection,
 * `freeze()` silently stops forwarding on them,
 * `target` can be changed (a restarted server), and `block` refuses
 * ('refuse': 403) or swallows ('swallow': never answers) requests whose
 * head matches it (a WebSocket upgrade, an SSE request). `rewrite`
 * ([pattern, replacement]) changes what clients send, chunk by chunk (each
 * request of a kept-alive connection too), on its way to the server.
 * `connections` counts the connections it was asked for.
 */
export async function startProxy(targetPort, { block = null, mode = 'refuse', rewrite = null } = {}) {
  const sockets = new Set();
  const pairs = [];
  const proxy = {
    targetPort,
    block,
    mode,
    url: '',
    cuts: 0,
    connections: 0,
    frozen: false,
    /**
     * Stops forwarding on every open connection without closing it (a dead
     * path), and holds every connection opened until `thaw()` without
     * forwarding it either: a request that went out on a fresh connection
     * just before the freeze must not slip past it.
     */
    freeze() {
      proxy.frozen = true;
      for (const s of sockets) s.pause();
      for (const [a, b] of pairs) {
        a.unpipe(b);
        b.unpipe(a);
        a.pause();
        b.pause();
      }
      pairs.length = 0;
    },
    /** New connections are forwarded again; those held by `freeze()` stay dead. */
    thaw() {
      proxy.frozen = false;
    },
    cut() {
      proxy.cuts++;
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    close() {
      proxy.cut();
      return new Promise((r) => server.close(r));
    },
  };
  const server = net.createServer((client) => {
    proxy.connections++;
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => {});
    if (proxy.frozen) return client.pause();
    client.once('data', (head) => {
      if (proxy.frozen) return client.pause();
      if (proxy.block && proxy.block.test(head.toString('latin1'))) {
        if (proxy.mode === 'refuse') client.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
        return;
      }
      const upstream = net.connect(proxy.targetPort, '127.0.0.1');
      sockets.add(upstream);
      upstream.on('close', () => (sockets.delete(upstream), client.destroy()));
      upstream.on('error', () => client.destroy());
      client.on('close', () => upstream.destroy());
      const edit = (chunk) => (rewrite ? Buffer.from(chunk.toString('latin1').replace(...rewrite), 'latin1') : chunk);
      upstream.write(edit(head));
      const from = rewrite ? client.pipe(new Transform({ transform: (chunk, _, done) => done(null, edit(chunk)) })) : client;
      from.pipe(upstream);
      upstream.pipe(client);
      pairs.push([from, upstream]);
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  proxy.url = `http://127.0.0.1:${server.address().port}`;
  return proxy;
}

export const WS_UPGRADE = /\r\nupgrade:\s*websocket/i;
export const SSE_REQUEST = /^GET \/v1\/sse/;

/** Collects what a client delivers for one topic, checking order and uniqueness on the way. */
export function collector() {
  const seqs = [];
  const problems = [];
  return {
    seqs,
    problems,
    handler(event) {
      const last = seqs.at(-1);
      if (last !== undefined && event.seq !== last + 1) problems.push(`seq ${event.seq} after ${last}`);
      seqs.push(event.seq);
    },
  };
}

export function range(from, to) {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}
