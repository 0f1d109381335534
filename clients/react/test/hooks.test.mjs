// The hooks against a test double of the client (the client itself is
// tested in tests/client and tests/package): what they subscribe to, what
// they render as events and state change, and what they release.
import { afterEach, describe, expect, test } from 'vitest';
import { act, cleanup, render, screen } from '@testing-library/react';
import { createElement as h, StrictMode, useEffect, useState } from 'react';
import { HeraldProvider, useHerald, useTopic } from '../src/index.js';

afterEach(cleanup);

/** The part of Herald the hooks use, recording subscriptions and listeners. */
class FakeHerald {
  state = 'connecting';
  subscriptions = [];
  listeners = new Set();

  subscribe(topic, handler, options) {
    const subscription = { topic, handler, options, active: true, unsubscribe: () => (subscription.active = false) };
    this.subscriptions.push(subscription);
    return subscription;
  }

  on(name, listener) {
    if (name !== 'state') throw new Error(`unexpected listener for ${name}`);
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  active(topic) {
    return this.subscriptions.filter((s) => s.active && s.topic === topic);
  }

  deliver(topic, seq, data) {
    act(() => {
      for (const s of this.active(topic)) s.handler({ topic, seq, id: `${topic}-${seq}`, time: '2026-01-01T00:00:00.000Z', data });
    });
  }

  setState(state) {
    act(() => {
      this.state = state;
      for (const l of [...this.listeners]) l(state);
    });
  }
}

function Feed({ topic, since, limit }) {
  const { events, state } = useTopic(topic, { since, limit });
  return h('div', null, h('p', { 'data-testid': 'state' }, state), h('p', { 'data-testid': 'events' }, events.map((e) => `${e.seq}:${e.data}`).join(',')));
}

const mount = (client, props, wrap = (x) => x) => render(wrap(h(HeraldProvider, { client }, h(Feed, props))));
const shown = (id) => screen.getByTestId(id).textContent;

describe('useTopic', () => {
  test('subscribes once to the topic with since and renders events in order as they arrive', () => {
    const client = new FakeHerald();
    mount(client, { topic: 'orders.42', since: 3 });
    expect(client.subscriptions.map((s) => [s.topic, s.options])).toEqual([['orders.42', { since: 3 }]]);
    expect(shown('events')).toBe('');
    client.deliver('orders.42', 4, 'a');
    client.deliver('orders.42', 5, 'b');
    expect(shown('events')).toBe('4:a,5:b');
  });

  test('without since subscribes live (no options)', () => {
    const client = new FakeHerald();
    mount(client, { topic: 'orders.42' });
    expect(client.subscriptions[0].options).toBeUndefined();
  });

  test('renders the connection state and follows its changes', () => {
    const client = new FakeHerald();
    mount(client, { topic: 'orders.42' });
    expect(shown('state')).toBe('connecting');
    client.setState('open');
    expect(shown('state')).toBe('open');
    client.setState('reconnecting');
    expect(shown('state')).toBe('reconnecting');
  });

  test('unsubscribes and removes its state listener on unmount', () => {
    const client = new FakeHerald();
    const { unmount } = mount(client, { topic: 'orders.42' });
    expect(client.active('orders.42')).toHaveLength(1);
    expect(client.listeners.size).toBe(1);
    unmount();
    expect(client.active('orders.42')).toHaveLength(0);
    expect(client.listeners.size).toBe(0);
  });

  test('a new topic unsubscribes the old one and starts with no events', () => {
    const client = new FakeHerald();
    const { rerender } = mount(client, { topic: 'a' });
    client.deliver('a', 1, 'x');
    expect(shown('events')).toBe('1:x');
    rerender(h(HeraldProvider, { client }, h(Feed, { topic: 'b' })));
    expect(client.active('a')).toHaveLength(0);
    expect(client.active('b')).toHaveLength(1);
    expect(shown('events')).toBe('');
    client.deliver('b', 7, 'y');
    expect(shown('events')).toBe('7:y');
  });

  test('keeps only the latest limit events', () => {
    const client = new FakeHerald();
    mount(client, { topic: 'a', limit: 2 });
    for (let seq = 1; seq <= 5; seq++) client.deliver('a', seq, String(seq));
    expect(shown('events')).toBe('4:4,5:5');
  });

  test('under StrictMode ends with exactly one active subscription, released on unmount', () => {
    const client = new FakeHerald();
    const { unmount } = mount(client, { topic: 'a' }, (tree) => h(StrictMode, null, tree));
    expect(client.active('a')).toHaveLength(1);
    client.deliver('a', 1, 'x');
    expect(shown('events')).toBe('1:x');
    unmount();
    expect(client.active('a')).toHaveLength(0);
    expect(client.listeners.size).toBe(0);
  });
});

describe('a provider whose client is made later (in an effect, as with Next.js)', () => {
  test('renders connecting with no events and no subscription until the client exists', () => {
    const client = new FakeHerald();
    const { rerender } = mount(null, { topic: 'a', since: 0 });
    expect(shown('state')).toBe('connecting');
    expect(shown('events')).toBe('');
    rerender(h(HeraldProvider, { client }, h(Feed, { topic: 'a', since: 0 })));
    expect(client.active('a').map((s) => s.options)).toEqual([{ since: 0 }]);
    client.setState('open');
    client.deliver('a', 1, 'x');
    expect(shown('state')).toBe('open');
    expect(shown('events')).toBe('1:x');
  });

  test('a client made and closed by an effect is subscribed once and released on unmount, under StrictMode', () => {
    const made = [];
    function Providers({ children }) {
      const [client, setClient] = useState(null);
      useEffect(() => {
        const c = new FakeHerald();
        c.closed = false;
        c.close = () => (c.closed = true);
        made.push(c);
        setClient(c);
        return () => c.close();
      }, []);
      return h(HeraldProvider, { client }, children);
    }
    const { unmount } = render(h(StrictMode, null, h(Providers, null, h(Feed, { topic: 'a' }))));
    const open = made.filter((c) => !c.closed);
    expect(open).toHaveLength(1);
    expect(open[0].active('a')).toHaveLength(1);
    expect(made.flatMap((c) => (c.closed ? c.active('a') : []))).toHaveLength(0);
    open[0].deliver('a', 1, 'x');
    expect(shown('events')).toBe('1:x');
    unmount();
    expect(open[0].closed).toBe(true);
    expect(open[0].active('a')).toHaveLength(0);
  });
});

describe('useHerald', () => {
  test('answers the provided client', () => {
    const client = new FakeHerald();
    let seen;
    const Probe = () => ((seen = useHerald()), null);
    render(h(HeraldProvider, { client }, h(Probe)));
    expect(seen).toBe(client);
  });

  test('answers null while the provider has no client', () => {
    let seen;
    const Probe = () => ((seen = useHerald()), null);
    render(h(HeraldProvider, { client: null }, h(Probe)));
    expect(seen).toBeNull();
  });

  test('throws without a provider', () => {
    const Probe = () => (useHerald(), null);
    const quiet = console.error;
    console.error = () => {};
    try {
      expect(() => render(h(Probe))).toThrow(/no <HeraldProvider/);
    } finally {
      console.error = quiet;
    }
  });
});
