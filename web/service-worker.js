/*
 * The demo page's service worker: the page posts each event to it with postMessage, and it
 * delivers the event with fetch() to POST /events, retrying transient failures (see send.js).
 * Its requests carry `X-Sent-By: service-worker`, so the server log shows which path was taken.
 *
 * Messages from the page: {type: 'send-event', id, url, event, key}
 * Messages to the page:   {type: 'accepted' | 'retrying' | 'result', id, …}
 */
'use strict';

importScripts('/static/send.js');

// Take control at once: a new worker does not wait for old tabs to close, and claims open pages.
self.addEventListener('install', (event) => {
  event.waitUntil(self.skipWaiting());
});

self.addEventListener('activate', (event) => {
  event.waitUntil(self.clients.claim());
});

function isEventsUrl(url) {
  try {
    const parsed = new URL(url);
    return (parsed.protocol === 'http:' || parsed.protocol === 'https:') && parsed.pathname.endsWith('/events');
  } catch {
    return false;
  }
}

self.addEventListener('message', (event) => {
  const message = event.data;
  const client = event.source;
  if (!message || message.type !== 'send-event' || !client) return;
  const { id, url, key } = message;
  if (!isEventsUrl(url) || typeof key !== 'string') {
    client.postMessage({ type: 'result', id, result: { ok: false, status: 0, error: 'rejected by the service worker: bad message', attempts: 0 } });
    return;
  }
  client.postMessage({ type: 'accepted', id });
  // waitUntil keeps the worker alive through the retries.
  event.waitUntil(
    self.AnalyticsSend.sendEvent(url, message.event, key, {
      headers: { 'X-Sent-By': 'service-worker' },
      onRetry: (info) => client.postMessage({ type: 'retrying', id, ...info }),
    }).then((result) => client.postMessage({ type: 'result', id, result })),
  );
});
