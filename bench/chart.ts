// A small SVG writer for the benches: grouped bars, one group per measured row, one colour per
// column (series), a legend, and each bar's value written on it. No dependencies; the SVG is plain
// text a browser or GitHub renders as is.
//
// Scales:
// - 'linear': one axis from 0 shared by every group (all rows in one unit);
// - 'log': one logarithmic axis in decades (values spanning orders of magnitude);
// - 'group': each group scaled to its own largest value, no shared axis (rows in different units
//   compared within the row; the values on the bars carry the absolute numbers).
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

export type ChartScale = 'linear' | 'log' | 'group';

export interface ChartGroup {
  label: string;
  /** Shown under the label, e.g. "MB/s". */
  unit: string;
  /** One per series; undefined where nothing was measured ("n/a" on the chart). */
  values: readonly (number | undefined)[];
}

export interface BarChart {
  title: string;
  /** Smaller lines under the title: setup, date, what the scale means. */
  notes?: readonly string[];
  /** Column names, in bar order; the legend. */
  series: readonly string[];
  groups: readonly ChartGroup[];
  scale?: ChartScale;
}

/** Okabe–Ito: distinguishable with the common colour-vision deficiencies. */
const PALETTE = ['#0072B2', '#56B4E9', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#F0E442', '#000000'];

const BAR_W = 22;
const BAR_GAP = 3;
const GROUP_GAP = 28;
const PLOT_H = 260;
const LEFT = 64;
const RIGHT = 16;
const TITLE_H = 26;
const NOTE_H = 15;
const LEGEND_H = 24;
/** Room above the tallest bar for its value, written upwards. */
const VALUE_ROOM = 58;
/** Group labels: one line per comma-separated part, then the unit. */
const LABEL_LINE_H = 14;
const FONT = 'font-family="sans-serif"';
/** Average character widths of sans-serif at the sizes used, to size the canvas to its text. */
const TITLE_CHAR_W = 8.5;
const NOTE_CHAR_W = 6;
const LEGEND_CHAR_W = 7;
const LABEL_CHAR_W = 6.5;

/** Horizontal room of one legend entry: swatch, gap, name, space to the next. */
const legendStep = (name: string) => 16 + LEGEND_CHAR_W * name.length + 18;

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** About three significant digits, no exponent: 0.51, 7.04, 17.6, 176, 3866. */
export function formatValue(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 0.01) return v.toFixed(2);
  return v.toPrecision(2);
}

/** An axis tick: no trailing zeros (0.1, 1, 10, 250). */
const tickLabel = (v: number) => String(Number(v.toPrecision(6)));

/** "dd 4K read, QD1" → ["dd 4K read", "QD1"]: labels wrap at their commas. */
const labelLines = (label: string) => label.split(/,\s*/);

/** Tick step for a linear axis up to `max`: 1, 2 or 5 × 10^k, about five ticks. */
function niceStep(max: number): number {
  const raw = max / 5;
  const p = 10 ** Math.floor(Math.log10(raw));
  const m = raw / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

interface Axis {
  /** Height in pixels (0..PLOT_H) of a bar for `v` in group `g`. */
  height(v: number, g: number): number;
  ticks: { at: number; label: string }[];
}

function axisFor(c: BarChart): Axis {
  const scale = c.scale ?? 'linear';
  const all = c.groups.flatMap((g) => g.values.filter((v): v is number => v !== undefined && v > 0));
  if (scale === 'group') {
    const maxima = c.groups.map((g) => Math.max(0, ...g.values.map((v) => v ?? 0)));
    return { height: (v, g) => (maxima[g]! > 0 ? (v / maxima[g]!) * PLOT_H : 0), ticks: [] };
  }
  if (all.length === 0) return { height: () => 0, ticks: [] };
  if (scale === 'log') {
    const lo = Math.floor(Math.log10(Math.min(...all)));
    const hi = Math.max(lo + 1, Math.ceil(Math.log10(Math.max(...all))));
    const ticks = [];
    for (let e = lo; e <= hi; e++)
      ticks.push({ at: ((e - lo) / (hi - lo)) * PLOT_H, label: tickLabel(10 ** e) });
    return {
      height: (v) => (v > 0 ? Math.max(0, ((Math.log10(v) - lo) / (hi - lo)) * PLOT_H) : 0),
      ticks,
    };
  }
  const step = niceStep(Math.max(...all));
  const top = Math.ceil(Math.max(...all) / step) * step;
  const ticks = [];
  for (let t = 0; t <= top + step / 2; t += step) ticks.push({ at: (t / top) * PLOT_H, label: tickLabel(t) });
  return { height: (v) => (v / top) * PLOT_H, ticks };
}

/** The chart as an SVG document. */
export function barChartSvg(c: BarChart): string {
  const n = c.series.length;
  const groupW = n * BAR_W + (n - 1) * BAR_GAP;
  const notes = c.notes ?? [];
  const legendW = c.series.reduce((w, name) => w + legendStep(name), 0);
  const labelW = Math.max(
    0,
    ...c.groups.flatMap((g) => [...labelLines(g.label), g.unit]).map((l) => LABEL_CHAR_W * l.length),
  );
  const minSlot = Math.max(groupW, labelW) + GROUP_GAP;
  const width = Math.ceil(
    Math.max(
      LEFT + c.groups.length * minSlot + RIGHT,
      LEFT + TITLE_CHAR_W * c.title.length + RIGHT,
      LEFT + NOTE_CHAR_W * Math.max(0, ...notes.map((l) => l.length)) + RIGHT,
      LEFT + legendW + RIGHT,
    ),
  );
  const plotTop = TITLE_H + notes.length * NOTE_H + LEGEND_H + VALUE_ROOM;
  const baseY = plotTop + PLOT_H;
  const labelRows = Math.max(1, ...c.groups.map((g) => labelLines(g.label).length)) + 1;
  const height = baseY + labelRows * LABEL_LINE_H + 12;
  // Groups share the plot's width evenly (a chart made wide by its notes does not bunch them left).
  const slot = (width - LEFT - RIGHT) / Math.max(1, c.groups.length);
  const axis = axisFor(c);
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`,
    `<title>${esc(c.title)}</title>`,
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
    `<text x="${LEFT}" y="18" ${FONT} font-size="15" font-weight="bold">${esc(c.title)}</text>`,
  );
  notes.forEach((line, i) => {
    out.push(
      `<text x="${LEFT}" y="${TITLE_H + 10 + i * NOTE_H}" ${FONT} font-size="11" fill="#444">${esc(line)}</text>`,
    );
  });
  // Legend: a swatch and a name per series, in one row.
  let lx = LEFT;
  const ly = TITLE_H + notes.length * NOTE_H + 8;
  c.series.forEach((name, i) => {
    out.push(
      `<rect x="${lx}" y="${ly}" width="12" height="12" fill="${PALETTE[i % PALETTE.length]}"/>`,
      `<text x="${lx + 16}" y="${ly + 10}" ${FONT} font-size="12">${esc(name)}</text>`,
    );
    lx += legendStep(name);
  });
  for (const t of axis.ticks) {
    const y = (baseY - t.at).toFixed(1);
    out.push(
      `<line x1="${LEFT - 4}" y1="${y}" x2="${width - RIGHT}" y2="${y}" stroke="#ddd"/>`,
      `<text x="${LEFT - 6}" y="${y}" ${FONT} font-size="10" text-anchor="end" dominant-baseline="middle">${t.label}</text>`,
    );
  }
  out.push(`<line x1="${LEFT}" y1="${baseY}" x2="${width - RIGHT}" y2="${baseY}" stroke="#333"/>`);
  c.groups.forEach((g, gi) => {
    const gx = LEFT + gi * slot + (slot - groupW) / 2;
    for (let si = 0; si < n; si++) {
      const v = g.values[si];
      const x = gx + si * (BAR_W + BAR_GAP);
      const h = v === undefined ? 0 : axis.height(v, gi);
      const top = baseY - h;
      if (h > 0) {
        out.push(
          `<rect x="${x}" y="${top.toFixed(1)}" width="${BAR_W}" height="${h.toFixed(1)}" fill="${PALETTE[si % PALETTE.length]}"/>`,
        );
      }
      const tx = x + BAR_W / 2 + 4;
      const ty = top - 4;
      out.push(
        `<text x="${tx}" y="${ty.toFixed(1)}" ${FONT} font-size="10" transform="rotate(-90 ${tx} ${ty.toFixed(1)})">` +
          `${v === undefined ? 'n/a' : formatValue(v)}</text>`,
      );
    }
    const cx = gx + groupW / 2;
    const lines = labelLines(g.label);
    lines.forEach((l, li) => {
      out.push(
        `<text x="${cx}" y="${baseY + 16 + li * LABEL_LINE_H}" ${FONT} font-size="11" text-anchor="middle">${esc(l)}</text>`,
      );
    });
    out.push(
      `<text x="${cx}" y="${baseY + 16 + lines.length * LABEL_LINE_H}" ${FONT} font-size="10" fill="#555" text-anchor="middle">${esc(g.unit)}</text>`,
    );
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

/** Writes the chart to `path`, creating its directory. */
export function writeChart(path: string, c: BarChart): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, barChartSvg(c));
}
