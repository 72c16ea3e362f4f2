/*
 * The dashboard's raw-data panel: "Export CSV" downloads the events of the range the dashboard
 * shows (GET /admin/export?format=csv, with the admin token), and shows the retention horizon
 * when that range reaches before it (GET /admin/rollups/status).
 *
 * The admin token is typed into the page and kept in this script's memory only: it is read from
 * the password field when needed, sent only in the Authorization header of these two requests,
 * and never written to localStorage, a cookie or the address.
 *
 * Self-contained: it reads the range from what the dashboard shows (the data-first, data-last and
 * data-tz attributes of its range line, its #start-date, #end-date, #event-type and #time-zone
 * controls); failing those it asks the service for the default range
 * (GET /analytics/event-counts-by-day), as the dashboard itself does.
 */
(function () {
  'use strict';

  const params = new URLSearchParams(window.location.search);
  const API = (params.get('api') || window.location.origin).replace(/\/+$/, '');
  const $ = (selector) => document.querySelector(selector);

  let token = '';
  let horizon = null; // the retention horizon, "2025-05-06T00:00:00.000000Z", or null

  function value(selector) {
    const el = $(selector);
    return el && el.value ? el.value : '';
  }

  function say(message, isError) {
    const el = $('#export-status');
    el.textContent = message;
    el.classList.toggle('error-text', Boolean(isError));
  }

  async function call(path, query, accept) {
    const url = new URL(API + path);
    for (const [name, v] of Object.entries(query)) if (v) url.searchParams.set(name, v);
    const headers = { Accept: accept };
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(url, { headers, cache: 'no-store', credentials: 'omit' });
    } catch (err) {
      throw new Error(`cannot reach ${API}: ${err.message}`);
    }
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      const error = new Error((body && body.detail) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return response;
  }

  /* The range the dashboard shows: the local days its range line names (data-first, data-last,
     data-tz on #range-label), else its chosen dates, else the service's default range. */
  async function range() {
    const label = $('#range-label');
    const shown = label ? label.dataset : {};
    const chosen = {
      start_date: shown.first || value('#start-date'),
      end_date: shown.last || value('#end-date'),
      event_type: value('#event-type'),
      tz: shown.tz || value('#time-zone'),
    };
    if (chosen.start_date && chosen.end_date) return chosen;
    const answer = await call('/analytics/event-counts-by-day', chosen, 'application/json');
    const days = (await answer.json()).days;
    if (!days.length) return chosen;
    return { ...chosen, start_date: chosen.start_date || days[0].date, end_date: chosen.end_date || days[days.length - 1].date };
  }

  /* Whether the range may reach before the horizon: the horizon is the start of a UTC day, and
     a local day of that date begins before it east of UTC (the service decides exactly). */
  function crosses(r) {
    return Boolean(horizon && (!r.start_date || r.start_date <= horizon.slice(0, 10)));
  }

  async function refreshHorizon() {
    const note = $('#horizon-note');
    if (!token) {
      note.hidden = true;
      return;
    }
    const status = await (await call('/admin/rollups/status', {}, 'application/json')).json();
    horizon = status.horizon;
    const r = await range();
    note.hidden = !crosses(r);
    if (!note.hidden) {
      note.textContent = `Retention deleted the raw events before ${horizon} (UTC). Counts before it `
        + 'still come from the rollups; the export starts at the horizon.';
    }
  }

  async function download() {
    token = $('#admin-token').value;
    if (!token) {
      say('Type the admin token first.', true);
      return;
    }
    say('Exporting…');
    try {
      await refreshHorizon();
      const r = await range();
      const query = { format: 'csv', event_type: r.event_type, tz: r.tz, start_date: r.start_date, end_date: r.end_date };
      let answer;
      try {
        answer = await call('/admin/export', query, 'text/csv');
      } catch (err) {
        if (err.status !== 409 || !horizon) throw err;
        query.start_date = horizon; // the raw log starts there: export what it still holds
        answer = await call('/admin/export', query, 'text/csv');
      }
      const blob = await answer.blob();
      const link = document.createElement('a');
      link.href = URL.createObjectURL(blob);
      link.download = `events-${r.start_date || 'all'}-${r.end_date || 'now'}${r.event_type ? '-' + r.event_type : ''}.csv`;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
      const rows = Math.max(0, (await blob.text()).split('\r\n').length - 2);
      say(`Downloaded ${link.download}: ${rows} events (cursor ${answer.headers.get('X-Export-Cursor')}).`);
    } catch (err) {
      say(`Export failed: ${err.message}`, true);
    }
  }

  function start() {
    $('#export-csv').addEventListener('click', download);
    $('#admin-token').addEventListener('change', () => {
      token = $('#admin-token').value;
      refreshHorizon().catch((err) => say(`Status failed: ${err.message}`, true));
    });
    for (const selector of ['#start-date', '#end-date', '#event-type', '#time-zone']) {
      const el = $(selector);
      if (el) el.addEventListener('change', () => refreshHorizon().catch(() => {}));
    }
  }

  document.addEventListener('DOMContentLoaded', start);
}());
