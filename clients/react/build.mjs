// Builds @herald/react: ESM and CommonJS with react and @herald/client left
// as imports (peer dependencies), marked "use client" for React Server
// Components frameworks (Next.js), and the typings.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';

const here = (path) => new URL(path, import.meta.url).pathname;
rmSync(here('dist'), { recursive: true, force: true });
mkdirSync(here('dist'));
const common = {
  entryPoints: [here('src/index.js')],
  bundle: true,
  external: ['react', '@herald/client'],
  platform: 'neutral',
  target: 'es2020',
  banner: { js: '"use client";' },
  logLevel: 'warning',
};
await Promise.all([
  build({ ...common, format: 'esm', outfile: here('dist/index.mjs') }),
  build({ ...common, format: 'cjs', outfile: here('dist/index.cjs') }),
]);
copyFileSync(here('src/index.d.ts'), here('dist/index.d.ts'));
copyFileSync(here('src/index.d.ts'), here('dist/index.d.cts'));
