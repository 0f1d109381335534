// The @herald/client package as a consumer gets it: `npm pack` of clients/js
// (which builds it), installed from the tarball alone into a scratch
// project, then used there by its name: imported as ESM and required as
// CommonJS against a real herald server, type-checked by tsc under both
// module systems, and bundled into a page by Vite.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { ROOT, publish, startHerald, uniqueTopic, until, withTimeout } from '../../client/test/helpers.mjs';

const run = promisify(execFile);
const HERE = fileURLToPath(new URL('..', import.meta.url));
const PACKAGE = join(ROOT, 'clients/js');
const { version } = JSON.parse(readFileSync(join(PACKAGE, 'package.json'), 'utf8'));
/** Each step (pack, install, tsc, a live script) gets at most this long. */
const STEP_TIMEOUT_MS = 60_000;
/** A live script's own deadline, under STEP_TIMEOUT_MS. */
const LIVE_TIMEOUT_MS = 15_000;
/** Each test, and the set-up (pack, install, start the server), at most. */
const TEST = { timeout: 90_000 };

let scratch;
let server;

before(async () => {
  scratch = mkdtempSync(join(tmpdir(), 'herald-package-'));
  const packed = await run('npm', ['pack', '--silent', '--pack-destination', scratch], {
    cwd: PACKAGE,
    timeout: STEP_TIMEOUT_MS,
  });
  const tarball = join(scratch, packed.stdout.trim().split('\n').pop());
  writeFileSync(join(scratch, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }));
  // The package has no dependencies: the tarball alone installs, offline.
  await run('npm', ['install', '--offline', '--no-audit', '--no-fund', '--no-save', tarball], {
    cwd: scratch,
    timeout: STEP_TIMEOUT_MS,
  });
  server = await startHerald();
}, TEST);

after(async () => {
  await server?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/**
 * A consumer's script: subscribes to a fresh topic from seq 0 (so nothing
 * depends on when the subscription reaches the server), publishes one event
 * once open, and prints what it received and where the package resolved.
 */
const LIVE = `
const deadline = setTimeout(() => {
  console.error('no event within ${LIVE_TIMEOUT_MS} ms');
  process.exit(2);
}, ${LIVE_TIMEOUT_MS});
(async () => {
  const { HERALD_URL: url, HERALD_TOKEN: token, HERALD_TOPIC: topic } = process.env;
  const h = new Herald(url, { token });
  const received = new Promise((resolve) => h.subscribe(topic, resolve, { since: 0 }));
  await new Promise((resolve) => {
    if (h.state === 'open') return resolve();
    const off = h.on('state', (state) => state === 'open' && (off(), resolve()));
  });
  const res = await fetch(url + '/v1/publish', {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + token, 'Content-Type': 'application/json' },
    body: JSON.stringify([{ topic, data: { hello: 'package' } }]),
  });
  if (res.status !== 201) throw new Error('publish answered ' + res.status + ': ' + (await res.text()));
  const event = await received;
  console.log(JSON.stringify({
    resolved: RESOLVED,
    version: VERSION,
    transport: h.transport,
    isError: new HeraldError('x', 'y') instanceof Error,
    event: { topic: event.topic, seq: event.seq, data: event.data },
  }));
  h.close();
  clearTimeout(deadline);
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
`;

async function live(file, source) {
  writeFileSync(join(scratch, file), source);
  const topic = uniqueTopic('pkg');
  const { stdout } = await run(process.execPath, ['--experimental-websocket', file], {
    cwd: scratch,
    timeout: STEP_TIMEOUT_MS,
    env: { ...process.env, HERALD_URL: server.url, HERALD_TOKEN: server.token, HERALD_TOPIC: topic },
  });
  const out = JSON.parse(stdout.trim().split('\n').pop());
  assert.deepEqual(out.event, { topic, seq: 1, data: { hello: 'package' } });
  assert.equal(out.version, version);
  assert.equal(out.transport, 'websocket');
  assert.equal(out.isError, true);
  return out;
}

test('import from @herald/client (ESM) gives a Herald that subscribes and receives a published event', TEST, async () => {
  const out = await live(
    'live.mjs',
    `import { Herald, HeraldError, VERSION } from '@herald/client';
const RESOLVED = import.meta.resolve('@herald/client');
${LIVE}`,
  );
  assert.match(out.resolved, /node_modules\/@herald\/client\/dist\/index\.mjs$/);
});

test('require(@herald/client) (CommonJS) gives a Herald that subscribes and receives a published event', TEST, async () => {
  const out = await live(
    'live.cjs',
    `const { Herald, HeraldError, VERSION } = require('@herald/client');
const RESOLVED = require.resolve('@herald/client');
if (require('@herald/client').default !== Herald) throw new Error('default is not Herald');
if (typeof Herald.prototype.registerPush !== 'function') throw new Error('no registerPush');
${LIVE}`,
  );
  assert.match(out.resolved, /node_modules\/@herald\/client\/dist\/index\.cjs$/);
});

test('registerPush loads its module in the CommonJS build (bundled in) and reports a missing PushManager', TEST, async () => {
  writeFileSync(
    join(scratch, 'push.cjs'),
    `const { Herald } = require('@herald/client');
const h = new Herald('http://127.0.0.1:9', { token: 't' });
h.registerPush({}, { topics: ['a'] }).then(
  () => console.log('resolved'),
  (err) => console.log(err.name + ' ' + err.code),
).finally(() => h.close());
`,
  );
  const { stdout } = await run(process.execPath, ['push.cjs'], { cwd: scratch, timeout: STEP_TIMEOUT_MS });
  assert.equal(stdout.trim(), 'HeraldError push_unsupported');
});

test('the packed files are the builds, the typings and the readme, nothing else', TEST, async () => {
  const dir = join(scratch, 'node_modules/@herald/client');
  assert.deepEqual(readdirSync(join(dir, 'dist')).sort(), ['herald.min.js', 'index.cjs', 'index.d.cts', 'index.d.ts', 'index.mjs']);
  assert.deepEqual(readdirSync(dir).sort(), ['README.md', 'dist', 'package.json']);
  const min = await import(join(dir, 'dist/herald.min.js'));
  assert.equal(min.VERSION, version);
  assert.equal(typeof min.Herald, 'function');
});

test('tsc resolves the typings from ESM and CommonJS files (module nodenext)', TEST, async () => {
  const body = `
const h: Herald = new Herald('https://herald.example.com', { token: 't' });
const v: string = VERSION;
h.subscribe<{ n: number }>('orders.42', (e: HeraldEvent<{ n: number }>) => e.data.n.toFixed(), { since: 0 });
const s: State = h.state;
const e: HeraldError = new HeraldError('code', 'message');
// @ts-expect-error: a topic is a string
h.subscribe(42, () => {});
export { v, s, e };
`;
  writeFileSync(join(scratch, 'usage.mts'), `import { Herald, HeraldError, VERSION, type HeraldEvent, type State } from '@herald/client';\n${body}`);
  writeFileSync(
    join(scratch, 'usage.cts'),
    `import client = require('@herald/client');\nconst { Herald, HeraldError, VERSION } = client;\ntype Herald = client.Herald;\ntype HeraldError = client.HeraldError;\ntype HeraldEvent<T> = client.HeraldEvent<T>;\ntype State = client.State;\n${body}`,
  );
  writeFileSync(
    join(scratch, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: { target: 'es2022', module: 'nodenext', moduleResolution: 'nodenext', lib: ['es2022', 'dom'], strict: true, noEmit: true, skipLibCheck: false, types: [] },
      files: ['usage.mts', 'usage.cts'],
    }),
  );
  let out = '';
  try {
    await run(process.execPath, [join(HERE, 'node_modules/typescript/bin/tsc'), '--noEmit', '-p', join(scratch, 'tsconfig.json')], {
      timeout: STEP_TIMEOUT_MS,
    });
  } catch (err) {
    out = `${err.stdout}${err.stderr}` || String(err);
  }
  assert.equal(out, '', out);
});

test('Vite bundles a page that imports @herald/client, and the output holds the client', TEST, async () => {
  const { build } = await import('vite');
  writeFileSync(join(scratch, 'index.html'), '<!doctype html><title>t</title><script type="module" src="./main.js"></script>\n');
  writeFileSync(
    join(scratch, 'main.js'),
    `import { Herald, VERSION } from '@herald/client';
const h = new Herald('/', {});
h.subscribe('page.updates', (e) => (document.title = e.data + ' ' + VERSION));
`,
  );
  const outDir = join(scratch, 'vite-dist');
  await withTimeout(
    build({ root: scratch, configFile: false, logLevel: 'silent', build: { outDir, emptyOutDir: true } }),
    STEP_TIMEOUT_MS,
    'vite build',
  );
  const assets = readdirSync(join(outDir, 'assets')).filter((f) => f.endsWith('.js'));
  assert.equal(assets.length, 1, `one script, got ${assets}`);
  const js = readFileSync(join(outDir, 'assets', assets[0]), 'utf8');
  for (const needle of ['HeraldError', '/v1/', 'push_unsupported', version]) {
    assert.ok(js.includes(needle), `the bundle holds ${needle}`);
  }
});

test('the React Native foreground pattern of docs/API.md (a new client with the same persist object) resumes with nothing lost or repeated', TEST, async () => {
  const { Herald } = await import(join(scratch, 'node_modules/@herald/client/dist/index.mjs'));
  const topic = uniqueTopic('rn');
  // As the docs' example: positions in a Map that outlives each client.
  const positions = new Map();
  const persist = { getItem: (k) => positions.get(k) ?? null, setItem: (k, v) => positions.set(k, v) };
  const seqs = [];
  const connect = () => {
    const h = new Herald(server.url, { token: server.token, persist });
    h.subscribe(topic, (event) => seqs.push(event.seq));
    return h;
  };
  let h = connect();
  try {
    await until(() => h.state === 'open', 10_000, 'the first client opens');
    await publish(server, topic, ['one']);
    await until(() => seqs.length === 1, 10_000, () => `the first event, got ${seqs}`);
    // The app goes to the background: the client is closed (or the OS cuts it).
    h.close();
    await publish(server, topic, ['two', 'three']);
    // Back in the foreground: a new client, the same subscription without since.
    h = connect();
    await until(() => seqs.length >= 3, 10_000, () => `the events published while away, got ${seqs}`);
    await publish(server, topic, ['four']);
    await until(() => seqs.length >= 4, 10_000, () => `the live event, got ${seqs}`);
    assert.deepEqual(seqs, [1, 2, 3, 4]);
  } finally {
    h.close();
  }
});
