// A static server for test pages on an origin of their own (a page of
// "another origin" than Herald's), and the headless Chromium the tests drive.
import http from 'node:http';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { repoRoot } from './cluster.js';

export const artifactsDir = join(repoRoot, 'tests', 'browser', 'artifacts');

/**
 * Serves `/` (an empty page) and `/client.js` (copied from the Herald node
 * at `heraldUrl`, so a page here imports the library the server ships) on
 * 127.0.0.1; reach it as http://localhost:PORT or http://127.0.0.1:PORT,
 * two different origins (and sites).
 */
export async function startPageServer() {
  const state = { heraldUrl: null };
  const server = http.createServer(async (req, res) => {
    try {
      if (req.url === '/client.js' && state.heraldUrl) {
        const upstream = await fetch(`${state.heraldUrl}/client.js`, { signal: AbortSignal.timeout(10000) });
        res.writeHead(upstream.status, { 'content-type': 'text/javascript; charset=utf-8' });
        res.end(Buffer.from(await upstream.arrayBuffer()));
        return;
      }
      if (req.url === '/' || req.url.startsWith('/?')) {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
        res.end('<!doctype html><html><head><meta charset="utf-8"><title>test page</title></head><body></body></html>');
        return;
      }
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
    } catch (error) {
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(String(error));
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    port,
    /** Allowed-origin pages: http://localhost:PORT */
    localhost: `http://localhost:${port}`,
    /** Another site: http://127.0.0.1:PORT */
    loopback: `http://127.0.0.1:${port}`,
    /** Where /client.js comes from. */
    set heraldUrl(url) { state.heraldUrl = url; },
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

/**
 * Headless Chromium from the Debian package (never a downloaded browser).
 * Playwright gives every launch a fresh, empty --user-data-dir; each test
 * takes a fresh context (its own cookies, storage, tab group).
 */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    timeout: 60000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}

export function artifactPath(name) {
  mkdirSync(artifactsDir, { recursive: true });
  return join(artifactsDir, name);
}

/**
 * Records what a page reports: uncaught errors and console messages, for
 * assertions and failure messages.
 */
export function watchPage(page) {
  const record = { errors: [], console: [] };
  page.on('pageerror', (error) => record.errors.push(String(error)));
  page.on('console', (message) => record.console.push(`${message.type()}: ${message.text()}`));
  return record;
}

/**
 * Waits until `predicate(arg)` holds in the page; the failure message
 * quotes what the page code collected (`window.got`, `sse`, `ws`, `opens`,
 * `drains`, `errors`).
 */
export async function waitInPage(page, what, predicate, arg, timeoutMs = 15000) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: timeoutMs, polling: 50 });
  } catch (error) {
    const seen = await page.evaluate(() => {
      const out = {};
      for (const key of ['got', 'sse', 'ws', 'opens', 'drains', 'errors']) if (key in window) out[key] = window[key];
      return out;
    }).catch(() => ({}));
    throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; the page has ${JSON.stringify(seen)}`, { cause: error });
  }
}
