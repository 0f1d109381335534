// Herald's push service worker (served at /push-sw.js).
//
// It shows a notification for each Web Push message Herald sends and, when
// the notification is clicked, focuses or opens the page at the topic.
// Register it from a page on the same origin as Herald:
//
//   navigator.serviceWorker.register('/push-sw.js?open=/inbox')
//
// or, when Herald runs on another origin, load it from the app's own
// service worker: importScripts('https://herald.example.com/push-sw.js').
//
// A push is a pointer, not the event: {"topic", "seq", "type", "title",
// "body", "badge", "events"} (title and body only when the publisher gave
// them); the page fetches the events itself. The page opened is `open`
// (a query parameter of this script's URL, or self.HERALD_PUSH_OPEN, by
// default the worker's scope) with `#topic=<topic>&seq=<seq>`.
/* global self, clients */
'use strict';

(() => {
  const DEFAULT_TITLE = 'New activity';

  function openUrl(push) {
    const configured =
      new URL(self.location.href).searchParams.get('open') || self.HERALD_PUSH_OPEN || './';
    const url = new URL(configured, self.registration.scope);
    if (push.topic) {
      url.hash = 'topic=' + encodeURIComponent(push.topic) + '&seq=' + encodeURIComponent(push.seq);
    }
    return url.href;
  }

  function read(event) {
    if (!event.data) return {};
    try {
      const value = event.data.json();
      return value && typeof value === 'object' ? value : {};
    } catch {
      return { body: event.data.text() };
    }
  }

  self.addEventListener('push', (event) => {
    const push = read(event);
    const title = push.title || DEFAULT_TITLE;
    const options = {
      body: push.body || (push.events > 1 ? push.events + ' new events' : undefined),
      // One notification per topic: a newer push replaces the older one.
      tag: push.topic ? 'herald:' + push.topic : undefined,
      renotify: Boolean(push.topic),
      data: { url: openUrl(push), topic: push.topic, seq: push.seq },
    };
    const shown = [self.registration.showNotification(title, options)];
    if (typeof push.badge === 'number' && self.navigator && self.navigator.setAppBadge) {
      shown.push(self.navigator.setAppBadge(push.badge).catch(() => {}));
    }
    event.waitUntil(Promise.all(shown));
  });

  self.addEventListener('notificationclick', (event) => {
    event.notification.close();
    const url = (event.notification.data && event.notification.data.url) || self.registration.scope;
    event.waitUntil(
      clients.matchAll({ type: 'window', includeUncontrolled: true }).then((windows) => {
        for (const win of windows) {
          if (win.url === url && 'focus' in win) return win.focus();
        }
        for (const win of windows) {
          if ('navigate' in win && 'focus' in win) {
            return win.navigate(url).then((w) => (w || win).focus());
          }
        }
        return clients.openWindow(url);
      }),
    );
  });
})();
