// Uses the typed API of /client.js the way an application would; `tsc --noEmit` must accept it.
import Default, { Herald, HeraldError, VERSION, type HeraldEvent, type State, type Subscription } from '../../services/herald/static/client.js';

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
