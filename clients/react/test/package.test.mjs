// @vitest-environment node
// The built package (dist/, made by `npm test` first): both formats marked
// "use client", exporting the same API, and typings that tsc accepts
// usage.ts against (with @herald/client's own, from clients/js).
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, test } from 'vitest';

const dir = fileURLToPath(new URL('..', import.meta.url));
const TSC_TIMEOUT_MS = 60_000;
const API = ['DEFAULT_LIMIT', 'HeraldProvider', 'useHerald', 'useTopic'];

describe('the built package', () => {
  test('the ESM and CommonJS builds start with "use client" and export the API', async () => {
    for (const file of ['dist/index.mjs', 'dist/index.cjs']) {
      expect(readFileSync(`${dir}/${file}`, 'utf8').startsWith('"use client";'), file).toBe(true);
    }
    const esm = await import(`${dir}/dist/index.mjs`);
    const cjs = createRequire(import.meta.url)(`${dir}/dist/index.cjs`);
    expect(Object.keys(esm).sort()).toEqual(API);
    expect(Object.keys(cjs).sort()).toEqual(API);
  });

  test('tsc accepts usage.ts against the typings and rejects its marked mistakes', async () => {
    let out = '';
    try {
      await promisify(execFile)(process.execPath, [`${dir}/node_modules/typescript/bin/tsc`, '--noEmit', '-p', `${dir}/tsconfig.json`], {
        timeout: TSC_TIMEOUT_MS,
      });
    } catch (err) {
      out = `${err.stdout}${err.stderr}` || String(err);
    }
    expect(out).toBe('');
  }, TSC_TIMEOUT_MS);
});
