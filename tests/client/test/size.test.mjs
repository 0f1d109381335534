// The served client stays within its download budget: what the binary
// serves at /client.js (the minified build, services/herald/static/dist/),
// gzipped, as browsers download it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

const BUDGET_BYTES = 12 * 1024;
const served = readFileSync(new URL('../../../services/herald/static/dist/client.js', import.meta.url));
const source = readFileSync(new URL('../../../services/herald/static/client.js', import.meta.url));
const gz = (bytes) => gzipSync(bytes, { level: 9 }).length;

test('the served /client.js gzipped fits in 12 KB', () => {
  const gzipped = gz(served);
  console.log(`served /client.js: ${served.length} bytes, ${gzipped} gzipped (budget ${BUDGET_BYTES})`);
  console.log(`source client.js: ${source.length} bytes, ${gz(source)} gzipped (for information)`);
  assert.ok(gzipped <= BUDGET_BYTES, `the served /client.js is ${gzipped} bytes gzipped, over the ${BUDGET_BYTES} budget`);
});
