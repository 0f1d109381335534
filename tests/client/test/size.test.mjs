// The served client stays within its download budget.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

const BUDGET_BYTES = 12 * 1024;
const source = readFileSync(new URL('../../../services/herald/static/client.js', import.meta.url));

test('client.js gzipped fits in 12 KB', () => {
  const gzipped = gzipSync(source, { level: 9 }).length;
  console.log(`client.js: ${source.length} bytes, ${gzipped} gzipped`);
  assert.ok(gzipped <= BUDGET_BYTES, `client.js is ${gzipped} bytes gzipped, over the ${BUDGET_BYTES} budget`);
});
