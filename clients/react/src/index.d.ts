// Typings of @herald/react.
import type { ReactNode } from 'react';
import type { Herald, HeraldEvent, State } from '@herald/client';

/** How many of a topic's latest events useTopic keeps unless told. */
export declare const DEFAULT_LIMIT: number;

/**
 * Provides `client` to the tree below (null until it is made, as during
 * server rendering); does not close it.
 */
export declare function HeraldProvider(props: { client: Herald | null; children?: ReactNode }): ReactNode;

/** The Herald of the nearest HeraldProvider, or null while it has none; throws without a provider. */
export declare function useHerald(): Herald | null;

export interface TopicOptions {
  /** The seq already seen (0: everything retained) or a cursor; unset: live. */
  since?: number | string;
  /** How many of the latest events to keep (default DEFAULT_LIMIT). */
  limit?: number;
}

/**
 * Subscribes to `topic` while mounted; the latest events, oldest first, and
 * the connection state (`'connecting'` while the provider has no client).
 */
export declare function useTopic<T = unknown>(topic: string, options?: TopicOptions): { events: HeraldEvent<T>[]; state: State };
