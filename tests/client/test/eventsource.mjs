// A small EventSource for Node (which has none), following the browser's
// behaviour where the client depends on it: `open` once the answer is a
// 200 text/event-stream, `message` for unnamed events and named events by
// their name (an `event: error` included, as a MessageEvent with data),
// `lastEventId`, and a plain `error` event when the connection fails or
// ends. It does not reconnect by itself: the client closes it on error
// anyway. The URL carries the credentials (a ticket), as in a browser.
export class TestEventSource extends EventTarget {
  static urls = [];

  constructor(url, init = {}) {
    super();
    this.url = url;
    this.withCredentials = !!init.withCredentials;
    this.readyState = 0;
    this.lastEventId = '';
    this.onopen = this.onmessage = this.onerror = null;
    this.abort = new AbortController();
    TestEventSource.urls.push(url);
    this.run();
  }

  close() {
    this.readyState = 2;
    this.abort.abort();
  }

  fire(type, init) {
    if (this.readyState === 2 && type !== 'error') return;
    const event = init ? new MessageEvent(type, init) : new Event(type);
    this.dispatchEvent(event);
    this['on' + type]?.call(this, event);
  }

  async run() {
    try {
      const res = await fetch(this.url, { headers: { Accept: 'text/event-stream' }, signal: this.abort.signal });
      if (res.status !== 200 || !/^text\/event-stream/.test(res.headers.get('content-type') ?? '')) {
        this.readyState = 2;
        return this.fire('error');
      }
      this.readyState = 1;
      this.fire('open');
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      let fields = {};
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let i;
        while ((i = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, i);
          buffer = buffer.slice(i + 1);
          if (line === '') {
            if ('id' in fields) this.lastEventId = fields.id;
            if (fields.data !== undefined) this.fire(fields.event || 'message', { data: fields.data, lastEventId: this.lastEventId });
            fields = {};
          } else if (!line.startsWith(':')) {
            const k = line.indexOf(':');
            const name = k < 0 ? line : line.slice(0, k);
            const val = k < 0 ? '' : line.slice(k + 1).replace(/^ /, '');
            fields[name] = name === 'data' && fields.data !== undefined ? `${fields.data}\n${val}` : val;
          }
        }
      }
    } catch {}
    if (this.readyState !== 2) {
      this.readyState = 0;
      this.fire('error');
    }
  }
}
