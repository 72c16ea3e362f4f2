/*
 * The dashboard, in one time zone: the viewer's (Intl), unless ?tz= or the zone picker names
 * another. Every request carries that zone as `tz`, and every date on the page is a local date
 * of it (the date pickers too: they are sent as YYYY-MM-DD, which the API reads as local days).
 *
 * - The header: all-time totals per type (GET /analytics/event-counts-by-type).
 * - The range, in one of five views:
 *   - Today, 24 hours: GET /analytics/timeseries?interval=hour (today: start_date = end_date =
 *     today's local date; 24 hours: the API's default, the last 24 hours ending now);
 *   - Days: GET /analytics/event-counts-by-day. With no dates chosen it answers its default
 *     range: the last 30 days up to today, or, when those hold no event, the 30 days up to the
 *     newest day with events;
 *   - Weeks, months: GET /analytics/timeseries?interval=week|month, with no dates chosen over
 *     the last 12 weeks (ISO, from Monday) or months up to today, or, when those hold no event,
 *     the 12 up to the newest day with events (found with the by-day default).
 *   The line under the title says which range is shown and which of these rules chose it; the
 *   averages are over the days (or hours) shown.
 * - It refreshes itself every few seconds (paused while the tab is hidden).
 *
 * Address: view (today|24h|day|week|month), start, end (YYYY-MM-DD), type (view|click|location)
 * and tz (an IANA name) are kept in the address so a view can be shared; api=http://host:port
 * reads another service (it must allow this origin); refresh=seconds changes the refresh
 * interval (default 5).
 */
(function () {
  'use strict';

  const TYPES = ['view', 'click', 'location'];
  const LABELS = { view: 'Views', click: 'Clicks', location: 'Locations' };
  // What each view asks for; `units` is the length of its default range.
  const VIEWS = {
    today: { interval: 'hour', unit: 'hour' },
    '24h': { interval: 'hour', unit: 'hour' },
    day: { interval: 'day', unit: 'day', units: 30, plural: 'days' },
    week: { interval: 'week', unit: 'week', units: 12, plural: 'weeks' },
    month: { interval: 'month', unit: 'month', units: 12, plural: 'months' },
  };
  // ICU, and so Chromium, still names these zones by spellings the IANA database has replaced.
  // The service knows both (the old names are links to the new), people know the new ones.
  const RENAMED = {
    'Africa/Asmera': 'Africa/Asmara',
    'America/Buenos_Aires': 'America/Argentina/Buenos_Aires',
    'America/Catamarca': 'America/Argentina/Catamarca',
    'America/Coral_Harbour': 'America/Atikokan',
    'America/Cordoba': 'America/Argentina/Cordoba',
    'America/Godthab': 'America/Nuuk',
    'America/Indianapolis': 'America/Indiana/Indianapolis',
    'America/Jujuy': 'America/Argentina/Jujuy',
    'America/Louisville': 'America/Kentucky/Louisville',
    'America/Mendoza': 'America/Argentina/Mendoza',
    'Asia/Calcutta': 'Asia/Kolkata',
    'Asia/Katmandu': 'Asia/Kathmandu',
    'Asia/Rangoon': 'Asia/Yangon',
    'Asia/Saigon': 'Asia/Ho_Chi_Minh',
    'Atlantic/Faeroe': 'Atlantic/Faroe',
    'Europe/Kiev': 'Europe/Kyiv',
    'Pacific/Enderbury': 'Pacific/Kanton',
    'Pacific/Ponape': 'Pacific/Pohnpei',
    'Pacific/Truk': 'Pacific/Chuuk',
  };

  const params = new URLSearchParams(window.location.search);
  const API = (params.get('api') || window.location.origin).replace(/\/+$/, '');
  const REFRESH_MS = Math.max(1, Number(params.get('refresh')) || 5) * 1000;
  const DAY_MS = 86_400_000;

  const $ = (selector) => document.querySelector(selector);
  const number = new Intl.NumberFormat();
  const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const COLORS = { view: color('--c-view'), click: color('--c-click'), location: color('--c-location') };

  let chart = null;
  let shown = { rows: [], view: 'day' }; // what the chart's callbacks label
  let timer = null;
  let inFlight = false;
  let again = false;
  let refreshes = 0;

  // --- time zones -------------------------------------------------------------------------

  /** The zone's current IANA name if this browser knows it, else null. */
  function knownZone(name) {
    if (!name) return null;
    const zone = RENAMED[name] || name;
    try {
      new Intl.DateTimeFormat('en-US', { timeZone: zone });
      return zone;
    } catch {
      return null;
    }
  }

  const VIEWER_ZONE = knownZone(Intl.DateTimeFormat().resolvedOptions().timeZone) || 'UTC';

  /** Every zone this browser knows, UTC first, then by name. */
  function zoneNames(current) {
    const listed = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : [];
    const names = new Set(listed.map((name) => RENAMED[name] || name));
    names.add(VIEWER_ZONE);
    names.add(current);
    names.delete('UTC');
    return ['UTC', ...[...names].sort()];
  }

  /** "UTC+05:45": the zone's offset now. */
  function offsetNow(zone) {
    const parts = new Intl.DateTimeFormat('en-US', { timeZone: zone, timeZoneName: 'longOffset' }).formatToParts(new Date());
    const name = (parts.find((p) => p.type === 'timeZoneName') || { value: 'GMT' }).value;
    return name === 'GMT' ? 'UTC+00:00' : name.replace('GMT', 'UTC');
  }

  function fillZonePicker(current) {
    const select = $('#time-zone');
    for (const name of zoneNames(current)) {
      const option = document.createElement('option');
      option.value = name;
      option.textContent = name === 'UTC' ? 'UTC' : `${name} (${offsetNow(name)})`;
      select.append(option);
    }
    select.value = current;
  }

  /** Today's date (YYYY-MM-DD) in a zone. */
  function todayIn(zone) {
    const parts = new Intl.DateTimeFormat('en-US', { timeZone: zone, year: 'numeric', month: '2-digit', day: '2-digit' }).formatToParts(new Date());
    const part = (type) => parts.find((p) => p.type === type).value;
    return `${part('year')}-${part('month')}-${part('day')}`;
  }

  // --- local dates (YYYY-MM-DD strings; arithmetic on them as UTC midnights) ---------------

  const epoch = (day) => Date.parse(`${day}T00:00:00Z`);
  const fromEpoch = (ms) => new Date(ms).toISOString().slice(0, 10);
  const addDays = (day, n) => fromEpoch(epoch(day) + n * DAY_MS);
  const daysFrom = (first, last) => Math.round((epoch(last) - epoch(first)) / DAY_MS);

  /** The first day of the `n`-unit range (days, ISO weeks or months) that ends with `day`. */
  function rangeStart(day, unit, n) {
    if (unit === 'week') {
      const monday = addDays(day, -((new Date(epoch(day)).getUTCDay() + 6) % 7));
      return addDays(monday, -7 * (n - 1));
    }
    if (unit === 'month') {
      const first = new Date(epoch(`${day.slice(0, 8)}01`));
      first.setUTCMonth(first.getUTCMonth() - (n - 1));
      return fromEpoch(first.getTime());
    }
    return addDays(day, -(n - 1));
  }

  /** Whether `day` is the viewer's today, give or take a day of clock difference with the
   *  service. (The by-day default ends today, or, when it falls back, at least 30 days ago.) */
  const isAboutToday = (day, today) => Math.abs(daysFrom(day, today)) <= 1;

  // --- formatting -------------------------------------------------------------------------

  const formats = new Map();
  // Dates and clock times that are already local are formatted as if they were UTC.
  function format(options) {
    const key = JSON.stringify(options);
    if (!formats.has(key)) formats.set(key, new Intl.DateTimeFormat(undefined, { ...options, timeZone: 'UTC' }));
    return formats.get(key);
  }

  const dayText = (day, year) => format({ month: 'short', day: 'numeric', ...(year ? { year: 'numeric' } : {}) }).format(new Date(epoch(day)));
  const monthText = (day) => format({ month: 'short', year: 'numeric' }).format(new Date(epoch(day)));
  const timeText = (row) => format({ hour: 'numeric', minute: '2-digit' }).format(new Date(Date.parse(`${row.day}T${row.time}:00Z`)));

  function spanText(first, last) {
    if (first === last) return dayText(first, true);
    return format({ month: 'short', day: 'numeric', year: 'numeric' }).formatRange(new Date(epoch(first)), new Date(epoch(last)));
  }

  /** A row's name on the axis (short) or in a tooltip and the busiest line (long). */
  function rowText(row, view, long) {
    const unit = VIEWS[view].unit;
    if (unit === 'hour') {
      if (long) return `${dayText(row.day, true)}, ${timeText(row)} (${row.offset})`;
      return view === '24h' && row.time === '00:00' ? [timeText(row), dayText(row.day)] : timeText(row);
    }
    if (unit === 'month') return monthText(row.day);
    if (unit === 'week' && long) return `Week of ${dayText(row.day, true)}`;
    return dayText(row.day, long);
  }

  /** A row's name in the "busiest" box: short, one line. */
  function peakText(row, view) {
    const unit = VIEWS[view].unit;
    if (unit === 'hour') return view === '24h' ? `${dayText(row.day)}, ${timeText(row)}` : timeText(row);
    if (unit === 'week') return `Week of ${dayText(row.day)}`;
    return unit === 'month' ? monthText(row.day) : dayText(row.day);
  }

  function setNumber(el, value) {
    el.dataset.value = String(value);
    el.textContent = number.format(value);
  }

  // --- the API ----------------------------------------------------------------------------

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

  // One bar of the chart: `key` is the API's date or bucket start, `day` its local date,
  // `time` (HH:MM) and `offset` (UTC+05:45) for hours, `counts` the API's numbers.
  const dayRow = (d) => ({ key: d.date, day: d.date, time: null, offset: null, counts: d });

  function bucketRow(b) {
    const offset = /([+-]\d\d:\d\d|Z)$/.exec(b.start);
    return {
      key: b.start,
      day: b.start.slice(0, 10),
      time: b.start.slice(11, 16),
      offset: !offset || offset[1] === 'Z' || offset[1] === '+00:00' ? 'UTC' : `UTC${offset[1]}`,
      counts: b,
    };
  }

  async function byDay(query) {
    return (await getJSON('/analytics/event-counts-by-day', query)).days.map(dayRow);
  }

  async function series(interval, query) {
    return (await getJSON('/analytics/timeseries', { interval, ...query })).buckets.map(bucketRow);
  }

  const hasEvents = (rows) => rows.some((r) => TYPES.some((t) => r.counts[t] > 0));

  /**
   * The rows of the range the filters ask for, the first and last local day it covers, and
   * `rule`: which range this is (today, last-24-hours, chosen, recent = the default range up to
   * today, newest = the default range up to the newest day with events).
   */
  async function loadRange(f) {
    const today = todayIn(f.tz);
    const query = { event_type: f.event_type, tz: f.tz };
    const chosen = Boolean(f.start_date || f.end_date);
    if (f.view === 'today') {
      const rows = await series('hour', { ...query, start_date: today, end_date: today });
      return { rows, rule: 'today', first: today, last: today };
    }
    if (f.view === '24h') {
      const rows = await series('hour', query);
      return { rows, rule: 'last-24-hours', first: rows.length ? rows[0].day : today, last: today };
    }
    if (f.view === 'day') {
      const rows = await byDay({ ...query, start_date: f.start_date, end_date: f.end_date });
      const first = rows.length ? rows[0].day : null;
      const last = rows.length ? rows[rows.length - 1].day : null;
      const rule = chosen ? 'chosen' : !last || isAboutToday(last, today) ? 'recent' : 'newest';
      return { rows, rule, first, last };
    }
    const { unit, units } = VIEWS[f.view];
    let last = f.end_date || (f.start_date && f.start_date > today ? f.start_date : today);
    let first = f.start_date || rangeStart(last, unit, units);
    let rows = await series(f.view, { ...query, start_date: first, end_date: last });
    let rule = chosen ? 'chosen' : 'recent';
    if (!chosen && !hasEvents(rows)) {
      // Nothing lately: the by-day default knows the newest day with events (its last day, when
      // it had to fall back too; all types count, as they do there).
      const days = await byDay({ tz: f.tz });
      const newest = days.length ? days[days.length - 1].day : null;
      if (newest && !isAboutToday(newest, today)) {
        last = newest;
        first = rangeStart(newest, unit, units);
        rows = await series(f.view, { ...query, start_date: first, end_date: last });
        rule = 'newest';
      }
    }
    return { rows, rule, first, last };
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

  function describe(range, f) {
    const { units, plural } = VIEWS[f.view];
    const span = range.first ? spanText(range.first, range.last) : '';
    switch (range.rule) {
      case 'today':
        return `Today (${span}, ${f.tz})`;
      case 'last-24-hours':
        return range.rows.length ? `Last 24 hours (since ${dayText(range.rows[0].day)}, ${timeText(range.rows[0])}, ${f.tz})` : `Last 24 hours (${f.tz})`;
      case 'recent':
        return `Last ${units} ${plural} (${span}, ${f.tz})`;
      case 'newest':
        return `No events in the last ${units} ${plural} — showing the ${units} ${plural} up to the newest day with events (${span}, ${f.tz})`;
      default:
        return `${span} (${f.tz})`;
    }
  }

  function renderRange(range, f) {
    const { unit } = VIEWS[f.view];
    const hourly = unit === 'hour';
    const types = f.event_type ? [f.event_type] : TYPES;
    const perRow = range.rows.map((r) => types.reduce((sum, t) => sum + (r.counts[t] || 0), 0));
    const total = perRow.reduce((a, b) => a + b, 0);

    // The average is over the days (hours) shown: today's hours so far, every hour of the last
    // 24, or every day of the range.
    let span;
    let spanLabel;
    if (f.view === 'today') {
      const now = Date.now();
      span = range.rows.filter((r) => Date.parse(r.key) <= now).length;
      spanLabel = 'Hours so far';
    } else if (hourly) {
      span = range.rows.length;
      spanLabel = 'Hours';
    } else {
      span = range.first ? daysFrom(range.first, range.last) + 1 : 0;
      spanLabel = 'Days';
    }
    setNumber($('#range-total'), total);
    setNumber($('#range-units'), span);
    $('#range-units-label').textContent = spanLabel;
    $('#range-average-label').textContent = hourly ? 'Per hour (average)' : 'Per day (average)';
    const average = $('#range-average');
    average.dataset.value = span ? String(total / span) : '';
    average.textContent = span ? decimal.format(total / span) : '–';
    $('#range-peak-label').textContent = `Busiest ${unit}`;
    if (total > 0) {
      const peak = perRow.indexOf(Math.max(...perRow));
      $('#range-peak').textContent = `${peakText(range.rows[peak], f.view)} · ${number.format(perRow[peak])}`;
    } else {
      $('#range-peak').textContent = '–';
    }

    $('#range-title').textContent = `Events by ${unit}`;
    const label = $('#range-label');
    const what = f.event_type ? LABELS[f.event_type].toLowerCase() : 'all types';
    label.textContent = range.rows.length ? `${describe(range, f)} · ${what}` : `No data · ${what}`;
    label.dataset.view = f.view;
    label.dataset.rule = range.rule;
    label.dataset.first = range.first || '';
    label.dataset.last = range.last || '';
    label.dataset.tz = f.tz;
  }

  function renderChart(range, f) {
    const types = f.event_type ? [f.event_type] : TYPES;
    const labels = range.rows.map((r) => r.key);
    const datasets = types.map((type) => ({
      label: LABELS[type],
      eventType: type,
      data: range.rows.map((r) => r.counts[type] || 0),
      backgroundColor: COLORS[type],
      borderRadius: 3,
      borderSkipped: false,
      maxBarThickness: 28,
      stack: 'events',
    }));
    shown = { rows: range.rows, view: f.view };
    $('#chart-empty').hidden = range.rows.some((r) => types.some((t) => r.counts[t] > 0));
    $('#events-chart').setAttribute('aria-label', `Events per ${VIEWS[f.view].unit}, stacked by type`);
    if (!chart) {
      Chart.defaults.font.family = css.getPropertyValue('--font').trim();
      Chart.defaults.color = color('--muted');
      chart = new Chart($('#events-chart'), {
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
                title: (items) => (items.length ? rowText(shown.rows[items[0].dataIndex], shown.view, true) : ''),
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
                // On a category axis a tick's value is the index of its bar.
                callback: (value) => (shown.rows[value] ? rowText(shown.rows[value], shown.view, false) : ''),
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

  // --- controls ---------------------------------------------------------------------------

  function filters() {
    return {
      view: $('input[name="view"]:checked').value,
      start_date: $('#start-date').value,
      end_date: $('#end-date').value,
      event_type: $('#event-type').value,
      tz: $('#time-zone').value,
    };
  }

  function keepInAddress(f) {
    const next = new URLSearchParams(window.location.search);
    const kept = [['view', f.view === 'day' ? '' : f.view], ['start', f.start_date], ['end', f.end_date], ['type', f.event_type], ['tz', f.tz]];
    for (const [name, value] of kept) {
      if (value) next.set(name, value);
      else next.delete(name);
    }
    window.history.replaceState(null, '', `?${next.toString()}`);
  }

  /** Dates apply to the day, week and month views; the reset names that view's default. */
  function showViewControls(view) {
    const { unit, units, plural } = VIEWS[view];
    $('#dates').disabled = unit === 'hour';
    const reset = $('#reset-range');
    const n = units || 30;
    const name = plural || 'days';
    reset.textContent = `Last ${n} ${name}`;
    reset.title = `The last ${n} ${name} up to today; when they hold no event, the ${n} ${name} up to the newest day with events`;
  }

  function showError(message) {
    const banner = $('#error');
    banner.textContent = message;
    banner.hidden = !message;
  }

  // --- refreshing -------------------------------------------------------------------------

  async function load() {
    const f = filters();
    keepInAddress(f);
    try {
      const [byType, range] = await Promise.all([getJSON('/analytics/event-counts-by-type', { tz: f.tz }), loadRange(f)]);
      renderOverview(byType);
      renderRange(range, f);
      renderChart(range, f);
      showError('');
      refreshes += 1;
      document.body.dataset.refreshes = String(refreshes);
      $('#updated').textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      showError(`Could not load the numbers: ${err.message}`);
    }
  }

  /** Load, and load again at once if a control changed meanwhile (its answer is what shows). */
  async function refresh() {
    if (inFlight) {
      again = true;
      return;
    }
    inFlight = true;
    try {
      do {
        again = false;
        await load();
      } while (again);
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
    fillZonePicker(knownZone(params.get('tz')) || VIEWER_ZONE);
    const view = Object.hasOwn(VIEWS, params.get('view')) ? params.get('view') : 'day';
    $(`#view-${view}`).checked = true;
    showViewControls(view);
    $('#start-date').value = params.get('start') || '';
    $('#end-date').value = params.get('end') || '';
    $('#event-type').value = TYPES.includes(params.get('type')) ? params.get('type') : '';
    if (params.get('api')) {
      const demo = `/?api=${encodeURIComponent(API)}`;
      $('#nav-demo').href = demo;
      $('#empty-demo').href = demo;
    }

    $('#filters').addEventListener('change', (e) => {
      if (e.target.name === 'view') showViewControls(e.target.value);
      refresh();
    });
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
