// Bounded waits: every wait in these tests has a deadline and says what it
// waited for when it runs out.

/** Resolves with `promise`, or rejects after `ms` naming `what`. */
export function within(ms, what, promise) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/** Polls `check` (sync or async) every `everyMs` until it returns a truthy value. */
export async function until(what, check, { timeoutMs = 15000, everyMs = 50 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`);
    }
    await sleep(everyMs);
  }
}

/** Pauses; used only to space out published events, never to synchronise. */
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
