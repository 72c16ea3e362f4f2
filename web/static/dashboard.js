/*
 * The dashboard: all-time totals per type (GET /analytics/event-counts-by-type), then totals and a
 * daily chart for a date range and type (GET /analytics/event-counts-by-day; with no range the
 * service answers the last 30 days that have data). Refreshes itself every few seconds.
 *
 * Query parameters: start, end (YYYY-MM-DD), type (view|click|location) are kept in the address
 * so a view can be shared; api=http://host:port reads another service (it must allow this origin);
 * refresh=seconds changes the refresh interval (default 5).
 */
(function () {
  'use strict';

  const TYPES = ['view', 'click', 'location'];
  const LABELS = { view: 'Views', click: 'Clicks', location: 'Locations' };
  const params = new URLSearchParams(window.location.search);
  const API = (params.get('api') || window.location.origin).replace(/\/+$/, '');
  const REFRESH_MS = Math.max(1, Number(params.get('refresh')) || 5) * 1000;

  const $ = (selector) => document.querySelector(selector);
  const number = new Intl.NumberFormat();
  const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const COLORS = { view: color('--c-view'), click: color('--c-click'), location: color('--c-location') };

  let chart = null;
  let timer = null;
  let inFlight = false;
  let refreshes = 0;

  // --- helpers ----------------------------------------------------------------------------

  function dayLabel(day, withYear) {
    const options = { month: 'short', day: 'numeric', timeZone: 'UTC' };
    if (withYear) options.year = 'numeric';
    return new Date(`${day}T00:00:00Z`).toLocaleDateString(undefined, options);
  }

  function setNumber(el, value) {
    el.dataset.value = String(value);
    el.textContent = number.format(value);
  }

  async function getJSON(path, query = {}) {
    const url = new URL(API + path);
    for (const [name, value] of Object.entries(query)) if (value) url.searchParams.set(name, value);
    let response;
    try {
      response = await fetch(url, { headers: { Accept: 'application/json' }, cache: 'no-store', credentials: 'omit' });
    } catch (err) {
      throw new Error(`cannot reach ${API}: ${err.message}`);
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new Error((body && body.detail) || `${response.status} ${response.statusText}`);
    return body;
  }

  function filters() {
    return {
      start_date: $('#start-date').value,
      end_date: $('#end-date').value,
      event_type: $('#event-type').value,
    };
  }

  function keepInAddress(f) {
    const next = new URLSearchParams(window.location.search);
    for (const [name, value] of [['start', f.start_date], ['end', f.end_date], ['type', f.event_type]]) {
      if (value) next.set(name, value);
      else next.delete(name);
    }
    const query = next.toString();
    window.history.replaceState(null, '', query ? `?${query}` : window.location.pathname);
  }

  function showError(message) {
    const banner = $('#error');
    banner.textContent = message;
    banner.hidden = !message;
  }

  // --- rendering --------------------------------------------------------------------------

  function renderOverview(byType) {
    let total = 0;
    for (const type of TYPES) {
      const n = byType[type] || 0;
      total += n;
      setNumber($(`#total-${type}`), n);
    }
    setNumber($('#total-all'), total);
  }

  function renderRange(days, f) {
    const types = f.event_type ? [f.event_type] : TYPES;
    const perDay = days.map((d) => types.reduce((sum, t) => sum + d[t], 0));
    const total = perDay.reduce((a, b) => a + b, 0);
    setNumber($('#range-total'), total);
    setNumber($('#range-days'), days.length);
    $('#range-average').textContent = days.length ? decimal.format(total / days.length) : '–';
    if (total > 0) {
      const peak = perDay.indexOf(Math.max(...perDay));
      $('#range-peak').textContent = `${dayLabel(days[peak].date)} · ${number.format(perDay[peak])}`;
    } else {
      $('#range-peak').textContent = '–';
    }

    const what = f.event_type ? LABELS[f.event_type].toLowerCase() : 'all types';
    if (!days.length) {
      $('#range-label').textContent = `No data yet · ${what}`;
    } else {
      const span = `${dayLabel(days[0].date, true)} – ${dayLabel(days[days.length - 1].date, true)}`;
      const how = f.start_date || f.end_date ? 'chosen range' : 'last 30 days with data';
      $('#range-label').textContent = `${span} · ${how} · ${what}`;
    }
  }

  function renderChart(days, f) {
    const types = f.event_type ? [f.event_type] : TYPES;
    const labels = days.map((d) => d.date);
    const datasets = types.map((type) => ({
      label: LABELS[type],
      eventType: type,
      data: days.map((d) => d[type]),
      backgroundColor: COLORS[type],
      borderRadius: 3,
      borderSkipped: false,
      maxBarThickness: 28,
      stack: 'events',
    }));
    $('#chart-empty').hidden = days.some((d) => types.some((t) => d[t] > 0));
    if (!chart) {
      Chart.defaults.font.family = css.getPropertyValue('--font').trim();
      Chart.defaults.color = color('--muted');
      chart = new Chart($('#daily-chart'), {
        type: 'bar',
        data: { labels, datasets },
        options: {
          responsive: true,
          maintainAspectRatio: false,
          animation: false,
          interaction: { mode: 'index', intersect: false },
          plugins: {
            legend: { position: 'bottom', labels: { usePointStyle: true, pointStyle: 'rectRounded', padding: 18 } },
            tooltip: {
              callbacks: {
                title: (items) => (items.length ? dayLabel(labels[items[0].dataIndex], true) : ''),
                footer: (items) => `Total ${number.format(items.reduce((s, i) => s + i.parsed.y, 0))}`,
              },
            },
          },
          scales: {
            x: {
              stacked: true,
              grid: { display: false },
              ticks: {
                maxRotation: 0,
                autoSkip: true,
                autoSkipPadding: 12,
                callback(value) {
                  return dayLabel(this.getLabelForValue(value));
                },
              },
            },
            y: { stacked: true, beginAtZero: true, ticks: { precision: 0 }, grid: { color: color('--grid') }, border: { display: false } },
          },
        },
      });
    } else {
      chart.data.labels = labels;
      chart.data.datasets = datasets;
      chart.update('none');
    }
  }

  // --- refreshing -------------------------------------------------------------------------

  async function refresh() {
    if (inFlight) return;
    inFlight = true;
    const f = filters();
    keepInAddress(f);
    try {
      const [byType, byDay] = await Promise.all([
        getJSON('/analytics/event-counts-by-type'),
        getJSON('/analytics/event-counts-by-day', f),
      ]);
      renderOverview(byType);
      renderRange(byDay.days, f);
      renderChart(byDay.days, f);
      showError('');
      refreshes += 1;
      document.body.dataset.refreshes = String(refreshes);
      $('#updated').textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      showError(`Could not load the numbers: ${err.message}`);
    } finally {
      inFlight = false;
    }
  }

  function schedule() {
    clearInterval(timer);
    timer = null;
    if ($('#auto-refresh').checked && !document.hidden) timer = setInterval(refresh, REFRESH_MS);
  }

  function start() {
    $('#start-date').value = params.get('start') || '';
    $('#end-date').value = params.get('end') || '';
    $('#event-type').value = TYPES.includes(params.get('type')) ? params.get('type') : '';
    if (params.get('api')) $('#nav-demo').href = `/?api=${encodeURIComponent(API)}`;

    $('#filters').addEventListener('change', refresh);
    $('#filters').addEventListener('submit', (e) => {
      e.preventDefault();
      refresh();
    });
    $('#reset-range').addEventListener('click', () => {
      $('#start-date').value = '';
      $('#end-date').value = '';
      refresh();
    });
    $('#auto-refresh').addEventListener('change', schedule);
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) refresh();
      schedule();
    });
    refresh();
    schedule();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
