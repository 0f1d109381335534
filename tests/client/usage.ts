// Uses the typed API of /client.js the way an application would; `tsc --noEmit` must accept it.
import Default, {
  Herald,
  HeraldError,
  VERSION,
  type FrameInfo,
  type HeraldErrorCode,
  type HeraldEvent,
  type State,
  type StateChange,
  type Subscription,
} from '../../services/herald/static/client.js';

const version: string = VERSION;

interface Order {
  id: number;
  status: string;
}

const h: Herald = new Default('https://herald.example.com', {
  getToken: async () => 'a.b.c',
  transports: ['websocket', 'sse', 'poll'],
  persist: 'session',
  share: false,
  openTimeout: 3000,
});
const cookie = new Herald('/', { pauseWhenHidden: false, persist: sessionStorage });

const seen: number[] = [];
const s: Subscription = h.subscribe<Order>(
  'orders.42',
  (event: HeraldEvent<Order>) => {
    seen.push(event.seq);
    const status: string = event.data.status;
    const when: string = event.time;
    void status, when, event.id, event.topic, event.type;
  },
  { since: 0, onReset: ({ topic, from }) => console.log(topic, from), onError: (e) => console.log(e.code) },
);
cookie.subscribe('user.7', (e) => console.log(e.data), { since: 'user.7:3' });

const acking = new Herald('/', { ack: 'manual' });
acking.subscribe('user.7', (e) => acking.ack(e));
acking.close();

const offState = h.on('state', (state: State) => {
  if (state === 'open') console.log(h.transport);
});
h.on('reset', ({ topic, from }) => console.log(topic, from + 1));
h.on('error', (err: HeraldError) => console.log(err.code, err.status, err.topics));
offState();

// Developer experience: lifecycle lines, frames, state context, readiness, typed codes.
const debugging = new Herald('/', {
  debug: true,
  logger: console,
  getToken: async () => (Math.random() > 0.5 ? 'a.b.c' : null), // null: logged out
});
debugging.on('frame', (frame: FrameInfo) => console.log(frame.direction, frame.transport, frame.data));
debugging.on('state', (state: State, change: StateChange) => {
  const previous: State = change.previous;
  const retryIn: number | undefined = change.retryIn;
  if (change.reason === 'logged_out' || change.reason === 'closed:1012') console.log(state, previous, retryIn);
});
debugging.on('error', (err) => {
  const code: HeraldErrorCode | (string & {}) = err.code;
  switch (err.code) {
    case 'unsupported_protocol':
    case 'logged_out':
    case 'forbidden':
      console.log(code);
  }
});
const live: Promise<void> = s.ready;
live.then(
  () => console.log('live'),
  (e: HeraldError) => console.log(e.code),
);
debugging.close();

const position: number | undefined = s.seq;
const active: boolean = s.active;
void position, active;
s.unsubscribe();
h.close();
cookie.close();

// The typings are strict enough to catch mistakes (an unused directive fails the check).
// @ts-expect-error: not a transport
new Herald('/', { transports: ['carrier-pigeon'] });
// @ts-expect-error: ack is 'auto' or 'manual'
new Herald('/', { ack: true });
// @ts-expect-error: the events are state, reset and error
h.on('message', () => {});
// @ts-expect-error: a state listener gets a State, not a number
h.on('state', (state: number) => state);
// @ts-expect-error: getToken returns a token or null
new Herald('/', { getToken: () => 42 });
// @ts-expect-error: the logger has debug, info, warn and error
new Herald('/', { logger: { log: () => {} } });
// @ts-expect-error: the change's previous state is a State
h.on('state', (_s, change) => change.previous === 'asleep');
