/*
 * Sends one event to POST /events, retrying what may succeed on a second try.
 *
 * Shared by the demo page (which sends directly until its service worker controls it) and the
 * service worker (which loads it with importScripts). Every attempt of one event carries the same
 * Idempotency-Key, so a retry after a lost answer is stored once, never twice.
 *
 * Retried: network errors and 5xx answers (honouring Retry-After), a few times with exponential
 * backoff and jitter. Never retried: 4xx answers (the request itself is wrong; repeating it
 * cannot help).
 */
(function (scope) {
  'use strict';

  const MAX_ATTEMPTS = 5;
  const BASE_DELAY_MS = 300;
  const MAX_DELAY_MS = 8000;
  const MAX_RETRY_AFTER_MS = 30000;

  /** Retry-After as milliseconds (delta-seconds or an HTTP date), or null. */
  function retryAfterMs(value) {
    if (!value) return null;
    const seconds = Number(value);
    if (Number.isFinite(seconds) && seconds >= 0) return Math.min(seconds * 1000, MAX_RETRY_AFTER_MS);
    const when = Date.parse(value);
    if (Number.isNaN(when)) return null;
    return Math.min(Math.max(0, when - Date.now()), MAX_RETRY_AFTER_MS);
  }

  /** Exponential backoff with "equal jitter" for the given 1-based attempt. */
  function backoffMs(attempt) {
    const ceiling = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** (attempt - 1));
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function readBody(response) {
    const text = await response.text();
    try {
      return JSON.parse(text);
    } catch {
      return { detail: text.slice(0, 200) };
    }
  }

  /**
   * POST `event` to `url` with `Idempotency-Key: key`.
   * Resolves (never rejects) to {ok, status, body, error, attempts}.
   * `onRetry({attempt, delayMs, reason})` is called before each wait.
   */
  async function sendEvent(url, event, key, { headers = {}, onRetry = null } = {}) {
    let outcome = null;
    for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt += 1) {
      let delay;
      try {
        const response = await fetch(url, {
          method: 'POST',
          mode: 'cors',
          credentials: 'omit',
          cache: 'no-store',
          headers: { 'Content-Type': 'application/json', 'Idempotency-Key': key, ...headers },
          body: JSON.stringify(event),
        });
        const body = await readBody(response);
        if (response.ok) return { ok: true, status: response.status, body, error: null, attempts: attempt };
        outcome = {
          ok: false,
          status: response.status,
          body,
          error: (body && (body.detail || body.title)) || response.statusText || 'error',
          attempts: attempt,
        };
        if (response.status < 500) return outcome;
        delay = retryAfterMs(response.headers.get('Retry-After')) ?? backoffMs(attempt);
      } catch (err) {
        outcome = { ok: false, status: 0, body: null, error: `network error: ${err.message}`, attempts: attempt };
        delay = backoffMs(attempt);
      }
      if (attempt < MAX_ATTEMPTS) {
        if (onRetry) onRetry({ attempt, delayMs: Math.round(delay), reason: outcome.status ? `HTTP ${outcome.status}` : outcome.error });
        await sleep(delay);
      }
    }
    return outcome;
  }

  scope.AnalyticsSend = Object.freeze({ sendEvent, retryAfterMs, backoffMs, MAX_ATTEMPTS });
})(self);
