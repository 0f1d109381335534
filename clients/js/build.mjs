// Builds the package from the client the server serves
// (services/herald/static/client.js and its lazily imported client-push.js;
// nothing is copied by hand): ESM, CommonJS, one minified ESM file for
// <script type="module"> and CDNs, and the typings.
import { build } from 'esbuild';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';

const here = (path) => new URL(path, import.meta.url);
const { version } = JSON.parse(readFileSync(here('package.json'), 'utf8'));
const STATIC = here('../../services/herald/static/');

rmSync(here('dist'), { recursive: true, force: true });
mkdirSync(here('dist'));

const common = {
  entryPoints: [new URL('src/index.js', import.meta.url).pathname],
  bundle: true,
  // registerPush's `import('./client-push.js')` is bundled in: one file per
  // format, so CommonJS consumers (no dynamic import of a sibling ESM file)
  // can call it too.
  platform: 'neutral',
  target: 'es2020',
  define: { __HERALD_VERSION__: JSON.stringify(version) },
  banner: { js: `/*! @herald/client ${version} | MIT */` },
  legalComments: 'none',
  logLevel: 'warning',
};

await Promise.all([
  build({ ...common, format: 'esm', outfile: here('dist/index.mjs').pathname }),
  build({ ...common, format: 'cjs', outfile: here('dist/index.cjs').pathname }),
  build({ ...common, format: 'esm', minify: true, outfile: here('dist/herald.min.js').pathname }),
]);

// The typings are the served ones, plus VERSION; the same text for both
// formats (index.d.cts: CommonJS has the default export as `.default`, as
// the CommonJS build does).
const types = readFileSync(new URL('client.d.ts', STATIC), 'utf8').replace(
  /^\/\/ Typings of Herald's client.*\n/,
  `// Typings of @herald/client ${version} (from services/herald/static/client.d.ts).\n`,
);
const typings = `${types}\n/** This package's version. */\nexport declare const VERSION: string;\n`;
writeFileSync(here('dist/index.d.ts'), typings);
writeFileSync(here('dist/index.d.cts'), typings);
