/**
 * React bindings for Herald's client: `HeraldProvider` hands one client to
 * a tree, `useHerald()` reads it, `useTopic(topic)` subscribes for the
 * component's life and renders the topic's events and the connection state.
 * No JSX, so the source runs without a compiler.
 * @module @herald/react
 */
import { createContext, createElement, useCallback, useContext, useEffect, useState, useSyncExternalStore } from 'react';

/** @typedef {import('@herald/client').Herald} Herald */

const HeraldContext = createContext(/** @type {Herald | null} */ (null));
/** What useTopic renders before any event: one array, so an empty reset re-renders nothing. */
const NONE = Object.freeze([]);
/** How many of a topic's latest events useTopic keeps unless told. */
export const DEFAULT_LIMIT = 100;

/**
 * Provides `client` (a Herald made once, outside render: at module scope of
 * a client-only file, or in a `useState` initializer) to the tree below.
 * The provider does not close it: whoever made it does.
 */
export function HeraldProvider({ client, children }) {
  return createElement(HeraldContext.Provider, { value: client }, children);
}

/** The Herald of the nearest HeraldProvider; throws without one. */
export function useHerald() {
  const client = useContext(HeraldContext);
  if (!client) throw new Error('useHerald: no <HeraldProvider client={...}> above this component');
  return client;
}

/**
 * Subscribes to `topic` while the component is mounted (and again when
 * `topic` or `since` changes, starting over with no events); unsubscribes on
 * unmount. Answers the latest `limit` events, oldest first, and the client's
 * connection state. Renders `'connecting'` on the server.
 * @param {string} topic
 * @param {{ since?: number | string, limit?: number }} [options]
 */
export function useTopic(topic, { since, limit = DEFAULT_LIMIT } = {}) {
  const client = useHerald();
  const [events, setEvents] = useState(NONE);
  const onState = useCallback((changed) => client.on('state', changed), [client]);
  const state = useSyncExternalStore(
    onState,
    () => client.state,
    () => 'connecting',
  );
  useEffect(() => {
    setEvents(NONE);
    const subscription = client.subscribe(
      topic,
      (event) => setEvents((kept) => (kept.length < limit ? [...kept, event] : [...kept.slice(kept.length - limit + 1), event])),
      since === undefined ? undefined : { since },
    );
    return () => subscription.unsubscribe();
  }, [client, topic, since, limit]);
  return { events, state };
}
