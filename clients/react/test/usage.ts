// What a TypeScript application writes with @herald/react; tsc must accept
// it, and reject the lines marked @ts-expect-error (types.test.mjs).
import { createElement, type ReactNode } from 'react';
import type { Herald, HeraldEvent, State } from '@herald/client';
import { DEFAULT_LIMIT, HeraldProvider, useHerald, useTopic } from '@herald/react';

declare const herald: Herald;

export function Orders(): ReactNode {
  const { events, state } = useTopic<{ status: string }>('orders.42', { since: 0, limit: DEFAULT_LIMIT });
  const first: HeraldEvent<{ status: string }> | undefined = events[0];
  const now: State = state;
  const client: Herald | null = useHerald();
  // @ts-expect-error: the client may not be made yet
  const sure: Herald = useHerald();
  // @ts-expect-error: a topic is a string
  useTopic(42);
  // @ts-expect-error: since is a seq or a cursor
  useTopic('a', { since: true });
  return createElement('p', null, first?.data.status, now, String(client), String(sure));
}

export const app = createElement(HeraldProvider, { client: herald }, createElement(Orders));
export const later = createElement(HeraldProvider, { client: null });
