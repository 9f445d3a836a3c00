// How full a pool is and how its use moved: the fill bar of the pools list, and the chart
// of use over time on a pool's page (inline SVG drawn here: no library, no CDN, nothing
// the Content-Security-Policy would have to allow). Figures come from
// GET …/pools/{pool}/usage, whose last point is live.

import { api, P } from './api.js';
import { clearError, el, errorBox, showError, uid } from './dom.js';
import { fmtTime, plural } from './format.js';

const SVG = 'http://www.w3.org/2000/svg';

/** A bar: allocated is the track, in use the filled part; the numbers are text too. */
export function fillBar(counts) {
  const share = counts.allocated ? Math.min(1, counts.in_use / counts.allocated) : 0;
  const fill = el('span', { class: 'fill-used' });
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  return el('div', { class: 'fill' },
    el('span', { class: 'fill-track', 'aria-hidden': 'true' }, fill),
    el('span', { class: 'fill-text' },
      `${counts.in_use} of ${plural(counts.allocated, 'allocated licence')} in use (${Math.round(share * 100)}%)`));
}

// The range picker's choices: how far back, and the step that keeps a few hundred points.
const RANGES = [
  ['Day', 86400, 300],
  ['Week', 7 * 86400, 3600],
  ['Month', 30 * 86400, 6 * 3600],
  ['Year', 365 * 86400, 86400],
];

/** The chart section of a pool's page: range picker, chart, a text summary, a CSV link. */
export function usageSection(poolId) {
  const errors = errorBox();
  const figure = el('figure', { class: 'usage-chart' });
  const summary = el('p', { class: 'muted usage-summary', 'aria-live': 'polite' });
  const name = uid('range');
  let chosen = RANGES[1];
  const csv = el('a', { href: '#', class: 'csv-link' }, 'Download usage as CSV');
  csv.addEventListener('click', async (ev) => {
    ev.preventDefault();
    clearError(errors);
    try {
      await downloadCsv(usagePath(poolId, chosen), `usage-${poolId}.csv`);
    } catch (err) {
      showError(errors, err);
    }
  });
  const draw = async () => {
    clearError(errors);
    try {
      const usage = await api('GET', usagePath(poolId, chosen));
      figure.replaceChildren(chart(usage.points, figure.getBoundingClientRect().width || 640), el('figcaption', { class: 'legend' },
        el('span', { class: 'key key-allocated', 'aria-hidden': 'true' }), ' Allocated ',
        el('span', { class: 'key key-in-use', 'aria-hidden': 'true' }), ' In use'));
      const last = usage.points[usage.points.length - 1];
      summary.textContent = `Over the last ${chosen[0].toLowerCase()}: at most ${usage.peak_in_use} in use`
        + (last ? `; now ${last.in_use} of ${last.allocated} allocated.` : '.');
    } catch (err) {
      showError(errors, err);
    }
  };
  const picker = el('fieldset', { class: 'radios range-picker' }, el('legend', {}, 'Range'),
    RANGES.map((range) => {
      const input = el('input', { type: 'radio', name, value: range[0], id: uid('f'), checked: range === chosen });
      input.addEventListener('change', () => {
        chosen = range;
        draw();
      });
      return el('div', {}, input, el('label', { for: input.id }, range[0]));
    }));
  const id = uid('s');
  const node = el('section', { 'aria-labelledby': id }, el('h2', { id }, 'Usage over time'),
    picker, figure, summary, el('p', {}, csv), errors);
  draw();
  return node;
}

function usagePath(poolId, [, span, step]) {
  const from = new Date(Date.now() - span * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
  return P(poolId, `/usage?from=${encodeURIComponent(from)}&step=${step}`);
}

async function downloadCsv(path, filename) {
  const response = await fetch(path, { headers: { Accept: 'text/csv' }, credentials: 'same-origin', cache: 'no-store' });
  if (!response.ok) {
    let problem = null;
    try { problem = await response.json(); } catch { problem = null; }
    throw new Error((problem && problem.detail) || `The broker answered ${response.status}.`);
  }
  const url = URL.createObjectURL(await response.blob());
  const link = el('a', { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

// Drawn at the width it is shown at (a phone's or a desktop's), so that its text keeps
// its size rather than shrinking with the drawing.
const H = 240;
const PAD = { left: 40, right: 12, top: 12, bottom: 28 };

/** The chart: allocated as a line, in use as a filled area, time along the bottom. */
export function chart(points, width = 640) {
  const W = Math.max(280, Math.round(width));
  const title = svg('title', { id: uid('t') }, 'Licence usage over time');
  const root = svg('svg', {
    role: 'img', 'aria-label': 'Licence usage over time', viewBox: `0 0 ${W} ${H}`,
    width: W, height: H, class: 'chart', focusable: 'false',
  }, title);
  if (!points.length) return root;
  const times = points.map((p) => Date.parse(p.at));
  const t0 = times[0];
  const t1 = Math.max(times[times.length - 1], t0 + 1);
  const top = Math.max(1, ...points.map((p) => Math.max(p.allocated, p.in_use)));
  const x = (t) => PAD.left + ((t - t0) / (t1 - t0)) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
  const line = (key) => points.map((p, i) => `${i ? 'L' : 'M'}${x(times[i]).toFixed(1)},${y(p[key]).toFixed(1)}`).join(' ');
  const base = y(0).toFixed(1);
  const area = `${line('in_use')} L${x(times[times.length - 1]).toFixed(1)},${base} L${x(t0).toFixed(1)},${base} Z`;
  root.append(
    svg('line', { x1: PAD.left, x2: W - PAD.right, y1: base, y2: base, class: 'axis' }),
    svg('line', { x1: PAD.left, x2: W - PAD.right, y1: y(top).toFixed(1), y2: y(top).toFixed(1), class: 'grid' }),
    svg('text', { x: PAD.left - 6, y: y(top) + 4, class: 'tick', 'text-anchor': 'end' }, top),
    svg('text', { x: PAD.left - 6, y: Number(base) + 4, class: 'tick', 'text-anchor': 'end' }, 0),
    svg('path', { d: area, class: 'in-use' }),
    svg('path', { d: line('allocated'), class: 'allocated' }),
    svg('text', { x: PAD.left, y: H - 8, class: 'tick' }, fmtTime(points[0].at)),
    svg('text', { x: W - PAD.right, y: H - 8, class: 'tick', 'text-anchor': 'end' }, fmtTime(points[points.length - 1].at)),
  );
  if (points.length === 1) {
    root.append(svg('circle', { cx: x(t0), cy: y(points[0].in_use), r: 4, class: 'in-use-dot' }));
  }
  return root;
}
