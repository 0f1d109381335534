// Real Herald nodes for a test: runs target/debug/herald-test-cluster (built
// by `cargo test` or `cargo build -p herald-tests --bins`), reads the one JSON
// line it prints, and stops everything by closing its standard input.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { mint } from './jwt.js';
import { within } from './wait.js';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

function harnessPath() {
  const target = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(repoRoot, 'target');
  const path = join(target, 'debug', 'herald-test-cluster');
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: run \`cargo build -p herald-tests --bins\` (or cargo test) first`);
  }
  return path;
}

/**
 * Starts `nodes` Herald nodes (SQLite for one, Postgres + NATS for more)
 * with extra HERALD_* settings from `env`.
 */
export async function startCluster({ nodes = 1, env = {} } = {}) {
  const args = ['--nodes', String(nodes)];
  for (const [key, value] of Object.entries(env)) args.push('--env', `${key}=${value}`);
  const child = spawn(harnessPath(), args, { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise((resolveExit) => child.once('exit', (code, signal) => resolveExit({ code, signal })));
  const lines = createInterface({ input: child.stdout });
  const first = new Promise((resolveLine, reject) => {
    lines.once('line', resolveLine);
    exited.then(({ code, signal }) => reject(new Error(`herald-test-cluster exited (${code ?? signal}) before describing the cluster`)));
  });
  let info;
  try {
    info = JSON.parse(await within(180000, 'the test cluster to start', first));
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  }
  return new Cluster(info, child, exited);
}

export class Cluster {
  constructor(info, child, exited) {
    this.info = info;
    this.nodes = info.nodes;
    this.secret = info.secret;
    this.rootToken = info.tokens.root;
    this.child = child;
    this.exited = exited;
  }

  /** Base URL of node `i` (http://127.0.0.1:PORT). */
  url(i = 0) {
    return this.nodes[i].url;
  }

  /** A token signed with the cluster's secret. */
  token(claims) {
    return mint(this.secret, claims);
  }

  /** Publishes `data` to `topic` through node `node`; returns the answer (201 expected). */
  async publish(topic, data, { node = 0 } = {}) {
    const response = await fetch(`${this.url(node)}/v1/publish`, {
      method: 'POST',
      headers: { authorization: `Bearer ${this.rootToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ topic, data }),
      signal: AbortSignal.timeout(15000),
    });
    const body = await response.json();
    if (response.status !== 201) throw new Error(`publish to ${topic} answered ${response.status}: ${JSON.stringify(body)}`);
    return body;
  }

  /** GET /v1/admin/stats of node `node`. */
  /** The acknowledged seq of `sub` on `topic`, from the node's receipts (`GET /v1/acks`). */
  async acked(topic, sub, node = 0) {
    const query = `topic=${encodeURIComponent(topic)}&sub=${encodeURIComponent(sub)}`;
    const response = await fetch(`${this.url(node)}/v1/acks?${query}`, {
      headers: { authorization: `Bearer ${this.rootToken}` },
      signal: AbortSignal.timeout(10000),
    });
    if (response.status !== 200) throw new Error(`GET /v1/acks answered ${response.status}`);
    return (await response.json()).acks[0]?.seq;
  }

  async stats(node = 0) {
    const response = await fetch(`${this.url(node)}/v1/admin/stats`, {
      headers: { authorization: `Bearer ${this.rootToken}` },
      signal: AbortSignal.timeout(10000),
    });
    if (response.status !== 200) throw new Error(`stats answered ${response.status}`);
    return response.json();
  }

  /** Sends SIGTERM to node `i` (it drains, then exits). */
  terminate(i) {
    process.kill(this.nodes[i].pid, 'SIGTERM');
  }

  /** The log of node `i` so far (for failure messages). */
  log(i = 0) {
    try {
      return readFileSync(this.nodes[i].log, 'utf8');
    } catch {
      return '';
    }
  }

  /** Stops every node and server, and removes their files. */
  async stop() {
    this.child.stdin.end();
    try {
      await within(30000, 'the test cluster to stop', this.exited);
    } catch {
      this.child.kill('SIGKILL');
    }
  }
}

let counter = 0;
/** A topic no other test uses. */
export function uniqueTopic(prefix = 't') {
  counter += 1;
  return `${prefix}.${process.pid}-${Date.now().toString(36)}-${counter}`;
}
