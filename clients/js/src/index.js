// The package's entry: the client as the server serves it
// (services/herald/static/client.js, the one source), plus VERSION, which
// build.mjs fills in from package.json.
export * from '../../../services/herald/static/client.js';
export { default } from '../../../services/herald/static/client.js';

/** This package's version. */
export const VERSION = __HERALD_VERSION__;
