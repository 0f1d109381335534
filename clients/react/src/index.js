/**
 * React bindings for Herald's client: `HeraldProvider` hands one client to
 * a tree, `useHerald()` reads it, `useTopic(topic)` subscribes for the
 * component's life and renders the topic's events and the connection state.
 * No JSX, so the source runs without a compiler.
 * @module @herald/react
 */
import { createContext, createElement, useCallback, useContext, useEffect, useState, useSyncExternalStore } from 'react';

/** @typedef {import('@herald/client').Herald} Herald */

/** undefined: no provider; null: a provider whose client is not made yet. */
const HeraldContext = createContext(/** @type {Herald | null | undefined} */ (undefined));
/** What useTopic renders before any event: one array, so an empty reset re-renders nothing. */
const NONE = Object.freeze([]);
/** How many of a topic's latest events useTopic keeps unless told. */
export const DEFAULT_LIMIT = 100;

/**
 * Provides `client` to the tree below: a Herald made once, outside render
 * (at module scope of a browser-only file, or in an effect: `null` until
 * then, as during server rendering). The provider does not close it:
 * whoever made it does.
 */
export function HeraldProvider({ client, children }) {
  return createElement(HeraldContext.Provider, { value: client || null }, children);
}

/**
 * The Herald of the nearest HeraldProvider, or null while it has none;
 * throws without a provider.
 */
export function useHerald() {
  const client = useContext(HeraldContext);
  if (client === undefined) throw new Error('useHerald: no <HeraldProvider client={...}> above this component');
  return client;
}

const nothing = () => {};
const connecting = () => 'connecting';

/**
 * Subscribes to `topic` while the component is mounted (and again when
 * the client, `topic`, `since` or `limit` changes, starting over with no
 * events); unsubscribes on
 * unmount. Answers the latest `limit` events, oldest first, and the client's
 * connection state: `'connecting'` while the provider has no client (and on
 * the server).
 * @param {string} topic
 * @param {{ since?: number | string, limit?: number }} [options]
 */
export function useTopic(topic, { since, limit = DEFAULT_LIMIT } = {}) {
  const client = useHerald();
  const [events, setEvents] = useState(NONE);
  const onState = useCallback((changed) => (client ? client.on('state', changed) : nothing), [client]);
  const state = useSyncExternalStore(onState, client ? () => client.state : connecting, connecting);
  useEffect(() => {
    setEvents(NONE);
    if (!client) return undefined;
    const subscription = client.subscribe(
      topic,
      (event) => setEvents((kept) => (kept.length < limit ? [...kept, event] : [...kept.slice(kept.length - limit + 1), event])),
      since === undefined ? undefined : { since },
    );
    return () => subscription.unsubscribe();
  }, [client, topic, since, limit]);
  return { events, state };
}
