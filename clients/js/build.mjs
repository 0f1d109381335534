// Builds the package from the client the server serves
// (services/herald/static/client.js and its lazily imported client-push.js;
// nothing is copied by hand): ESM, CommonJS, one minified ESM file for
// <script type="module"> and CDNs, and the typings.
import { build } from 'esbuild';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';

const here = (path) => new URL(path, import.meta.url).pathname;
const STATIC = here('../../services/herald/static/');
const { version } = JSON.parse(readFileSync(here('package.json'), 'utf8'));
const source = readFileSync(`${STATIC}client.js`, 'utf8');
// The client's VERSION is the package's version: one must not move alone.
const clientVersion = source.match(/^export const VERSION = '([^']+)';$/m)?.[1];
if (clientVersion !== version) {
  console.error(`client.js has VERSION ${clientVersion}, package.json ${version}: make them the same`);
  process.exit(1);
}

rmSync(here('dist'), { recursive: true, force: true });
mkdirSync(here('dist'));

const common = {
  entryPoints: [`${STATIC}client.js`],
  bundle: true,
  // registerPush's `import('./client-push.js')` is bundled in: one file per
  // format, so CommonJS consumers (no dynamic import of a sibling ESM file)
  // can call it too.
  platform: 'neutral',
  target: 'es2020',
  banner: { js: `/*! @herald/client ${version} | Apache-2.0 */` },
  legalComments: 'none',
  logLevel: 'warning',
};

await Promise.all([
  build({ ...common, format: 'esm', outfile: here('dist/index.mjs') }),
  build({ ...common, format: 'cjs', outfile: here('dist/index.cjs') }),
  build({ ...common, format: 'esm', minify: true, outfile: here('dist/herald.min.js') }),
]);

// The typings are the served ones; the same text for both formats
// (index.d.cts: CommonJS has the default export as `.default`, as the
// CommonJS build does).
const types = readFileSync(`${STATIC}client.d.ts`, 'utf8').replace(
  /^\/\/ Typings of Herald's client.*\n/,
  `// Typings of @herald/client ${version} (services/herald/static/client.d.ts).\n`,
);
writeFileSync(here('dist/index.d.ts'), types);
writeFileSync(here('dist/index.d.cts'), types);
