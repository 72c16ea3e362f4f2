/*
 * The demo page: reports a `view` on load, a `click` on #click-me and a `location` on
 * #get-location. Events go through the service worker once it controls the page, and straight
 * from the page before that (so the first view is never lost). A log shows every answer.
 *
 * `?api=http://host:port` sends to another analytics service (it must allow this origin: CORS).
 */
(function () {
  'use strict';

  const { sendEvent } = self.AnalyticsSend;
  const params = new URLSearchParams(window.location.search);
  const API = (params.get('api') || window.location.origin).replace(/\/+$/, '');
  const EVENTS_URL = `${API}/events`;
  const USER_KEY = 'analytics-demo.user_id';
  const WORKER_ACK_MS = 3000; // no "accepted" from the worker by then: send directly (same key)

  const $ = (selector) => document.querySelector(selector);
  const pending = new Map(); // message id -> {entry, event, key, acked}

  // --- identity ------------------------------------------------------------------------

  function loadUserId() {
    try {
      let id = window.localStorage.getItem(USER_KEY);
      if (!id) {
        id = `user-${crypto.randomUUID()}`;
        window.localStorage.setItem(USER_KEY, id);
      }
      return id;
    } catch {
      return `user-${crypto.randomUUID()}`; // storage disabled: this visit only
    }
  }
  const USER_ID = loadUserId();

  // --- the log ---------------------------------------------------------------------------

  function describe(event) {
    const p = event.payload;
    if (event.event_type === 'view') return p.url;
    if (event.event_type === 'click') return `#${p.element_id} “${p.text}”`;
    return `${p.latitude.toFixed(5)}, ${p.longitude.toFixed(5)} (±${Math.round(p.accuracy ?? 0)} m)`;
  }

  function addEntry(event, route) {
    const item = document.createElement('li');
    item.className = 'log-entry';
    item.dataset.eventType = event.event_type;
    item.dataset.route = route;
    item.dataset.state = 'pending';

    const head = document.createElement('div');
    head.className = 'log-head';
    const badge = document.createElement('span');
    badge.className = `badge badge-${event.event_type}`;
    badge.textContent = event.event_type;
    const what = document.createElement('span');
    what.className = 'log-what';
    what.textContent = describe(event);
    const time = document.createElement('time');
    time.textContent = new Date().toLocaleTimeString();
    head.append(badge, what, time);

    const via = document.createElement('div');
    via.className = 'log-via';
    via.textContent = route === 'worker' ? 'via service worker' : 'sent directly (service worker not in control yet)';

    const answer = document.createElement('div');
    answer.className = 'log-answer';
    answer.textContent = 'sending…';

    item.append(head, via, answer);
    const log = $('#log');
    log.prepend(item);
    $('#log-empty').hidden = true;
    return item;
  }

  function settle(item, result) {
    const answer = item.querySelector('.log-answer');
    const tries = result.attempts > 1 ? ` after ${result.attempts} attempts` : '';
    if (result.ok) {
      item.dataset.state = 'ok';
      item.dataset.eventId = result.body.event_id;
      answer.textContent = `${result.status} accepted · event_id ${result.body.event_id}${tries}`;
    } else {
      item.dataset.state = 'error';
      answer.textContent = `${result.status ? `${result.status} ` : ''}error · ${result.error}${tries}`;
    }
  }

  // --- sending ---------------------------------------------------------------------------

  async function sendDirectly(item, event, key) {
    const result = await sendEvent(EVENTS_URL, event, key, {
      onRetry: ({ delayMs, reason }) => {
        item.querySelector('.log-answer').textContent = `${reason}; retrying in ${(delayMs / 1000).toFixed(1)} s…`;
      },
    });
    settle(item, result);
  }

  function track(eventType, payload) {
    const event = { user_id: USER_ID, event_type: eventType, payload };
    const key = crypto.randomUUID();
    const worker = navigator.serviceWorker && navigator.serviceWorker.controller;
    if (!worker) {
      sendDirectly(addEntry(event, 'page'), event, key);
      return;
    }
    const item = addEntry(event, 'worker');
    const id = key;
    const job = { item, event, key, acked: false };
    pending.set(id, job);
    worker.postMessage({ type: 'send-event', id, url: EVENTS_URL, event, key });
    setTimeout(() => {
      if (job.acked || !pending.has(id)) return;
      pending.delete(id); // the worker never answered: deliver it ourselves, same key
      item.dataset.route = 'page';
      item.querySelector('.log-via').textContent = 'sent directly (the service worker did not answer)';
      sendDirectly(item, event, key);
    }, WORKER_ACK_MS);
  }

  function onWorkerMessage(message) {
    const data = message.data || {};
    const job = pending.get(data.id);
    if (!job) return;
    const answer = job.item.querySelector('.log-answer');
    if (data.type === 'accepted') {
      job.acked = true;
    } else if (data.type === 'retrying') {
      answer.textContent = `${data.reason}; the worker retries in ${(data.delayMs / 1000).toFixed(1)} s…`;
    } else if (data.type === 'result') {
      pending.delete(data.id);
      settle(job.item, data.result);
    }
  }

  // --- the service worker ---------------------------------------------------------------

  function showWorker(state, text) {
    const el = $('#sw-status');
    el.dataset.state = state;
    el.dataset.controlled = String(Boolean(navigator.serviceWorker && navigator.serviceWorker.controller));
    el.textContent = text;
  }

  function watchWorker() {
    if (!('serviceWorker' in navigator)) {
      showWorker('unsupported', 'not supported here (events are sent directly)');
      return;
    }
    navigator.serviceWorker.addEventListener('message', onWorkerMessage);
    navigator.serviceWorker.startMessages();
    navigator.serviceWorker.addEventListener('controllerchange', () => showWorker('active', 'active, controls this page'));
    if (navigator.serviceWorker.controller) showWorker('active', 'active, controls this page');
    else showWorker('registering', 'registering…');
    navigator.serviceWorker
      .register('/service-worker.js', { scope: '/' })
      .then((registration) => {
        if (navigator.serviceWorker.controller) return;
        const worker = registration.installing || registration.waiting || registration.active;
        showWorker(worker ? worker.state : 'registered', `${worker ? worker.state : 'registered'}…`);
        if (worker) {
          worker.addEventListener('statechange', () => {
            if (!navigator.serviceWorker.controller) showWorker(worker.state, `${worker.state}…`);
          });
        }
      })
      .catch((err) => showWorker('error', `registration failed: ${err.message}`));
  }

  // --- what the page reports ---------------------------------------------------------------

  /** An XPath that finds `el` again: by id when it has one, else by position. */
  function xpathOf(el) {
    if (el.id) return `//*[@id="${el.id}"]`;
    const steps = [];
    for (let node = el; node && node.nodeType === Node.ELEMENT_NODE; node = node.parentElement) {
      let index = 1;
      for (let sib = node.previousElementSibling; sib; sib = sib.previousElementSibling) {
        if (sib.tagName === node.tagName) index += 1;
      }
      steps.unshift(`${node.tagName.toLowerCase()}[${index}]`);
    }
    return `/${steps.join('/')}`;
  }

  function selectorOf(el) {
    return el.id ? `#${CSS.escape(el.id)}` : el.tagName.toLowerCase();
  }

  function trackClick(el) {
    track('click', {
      element_id: el.id || null,
      text: el.textContent.trim().slice(0, 2048),
      xpath: xpathOf(el),
      selector: selectorOf(el),
    });
  }

  function showLocation(state, text) {
    const el = $('#location-status');
    el.dataset.state = state;
    el.textContent = text;
    el.setAttribute('role', state === 'error' ? 'alert' : 'status');
  }

  const GEO_ERRORS = {
    1: 'Location permission was denied, so no location event was sent.',
    2: 'Your position is not available right now, so no location event was sent.',
    3: 'Finding your position took too long, so no location event was sent.',
  };

  function shareLocation() {
    if (!('geolocation' in navigator)) {
      showLocation('error', 'This browser has no geolocation, so no location event was sent.');
      return;
    }
    showLocation('pending', 'Asking the browser for your position…');
    navigator.geolocation.getCurrentPosition(
      (position) => {
        const { latitude, longitude, accuracy } = position.coords;
        showLocation('ok', `Position ${latitude.toFixed(5)}, ${longitude.toFixed(5)} (±${Math.round(accuracy)} m) sent.`);
        track('location', { latitude, longitude, accuracy });
      },
      (error) => showLocation('error', GEO_ERRORS[error.code] || `Geolocation failed: ${error.message}`),
      { enableHighAccuracy: false, timeout: 10000, maximumAge: 0 },
    );
  }

  function start() {
    $('#user-id').textContent = USER_ID;
    $('#endpoint').textContent = EVENTS_URL;
    if (params.get('api')) $('#nav-dashboard').href = `/dashboard?api=${encodeURIComponent(API)}`;
    watchWorker();
    $('#click-me').addEventListener('click', (e) => trackClick(e.currentTarget));
    $('#get-location').addEventListener('click', shareLocation);
    track('view', { url: window.location.href, title: document.title || null });
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
