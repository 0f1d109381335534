// client.d.ts describes the API well enough for `tsc --noEmit` to accept a
// typical application and reject the mistakes marked in usage.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const dir = fileURLToPath(new URL('..', import.meta.url));

test('tsc --noEmit accepts usage.ts against client.d.ts', () => {
  let out = '';
  try {
    execFileSync(process.execPath, [`${dir}/node_modules/typescript/bin/tsc`, '--noEmit', '-p', `${dir}/tsconfig.json`], {
      encoding: 'utf8',
      timeout: 120_000,
    });
  } catch (e) {
    out = `${e.stdout}${e.stderr}` || String(e);
  }
  assert.equal(out, '', out);
});
