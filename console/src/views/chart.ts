/** Tokens (bars) and cost (line) per UTC day, drawn with uPlot and resized with its container. */

import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

import { count, usd } from '../format';
import { h } from '../dom';

const DAY_S = 86_400;

function compact(n: number): string {
  if (n >= 1e9) return `${+(n / 1e9).toFixed(1)}B`;
  if (n >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${+(n / 1e3).toFixed(1)}K`;
  return String(+n.toFixed(2));
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

function dayLabel(ts: number): string {
  const d = new Date(ts * 1000);
  return `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}`;
}

export class DailyChart {
  readonly element: HTMLElement;
  private readonly plot: uPlot;
  private readonly observer: ResizeObserver;

  constructor() {
    const target = h('div', { class: 'chart' });
    this.element = h('figure', { class: 'chart-card', 'data-chart': 'daily' }, target,
      h('figcaption', { class: 'muted' }, 'Tokens (in + out, bars) and cost (line) per UTC day'));
    const opts: uPlot.Options = {
      width: 600,
      height: 240,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: {
        x: { time: true, range: (_u, min, max) => [min - DAY_S / 2, max + DAY_S / 2] },
        tokens: { range: (_u, _min, max) => [0, Math.max(max, 1) * 1.1] },
        usd: { range: (_u, _min, max) => [0, Math.max(max, 1e-9) * 1.15] },
      },
      axes: [
        {
          // Whole UTC days only, labelled as dates; ticks thin out as the period grows.
          stroke: 'currentColor', space: 56, incrs: [DAY_S, 2 * DAY_S, 7 * DAY_S, 14 * DAY_S, 28 * DAY_S, 91 * DAY_S],
          values: (_u, splits) => splits.map(dayLabel),
          grid: { stroke: 'rgba(128,128,128,0.15)' }, ticks: { stroke: 'rgba(128,128,128,0.3)' },
        },
        { scale: 'tokens', stroke: 'currentColor', size: 56, values: (_u, vals) => vals.map(compact),
          grid: { stroke: 'rgba(128,128,128,0.15)' }, ticks: { stroke: 'rgba(128,128,128,0.3)' } },
        { scale: 'usd', side: 1, stroke: 'currentColor', size: 72, grid: { show: false },
          values: (_u, vals) => vals.map((v) => usd(v)), ticks: { stroke: 'rgba(128,128,128,0.3)' } },
      ],
      series: [
        { value: (_u, v) => (v === null ? '—' : new Date(v * 1000).toISOString().slice(0, 10)) },
        {
          label: 'Tokens', scale: 'tokens', stroke: '#1f6feb', fill: 'rgba(31,111,235,0.45)',
          paths: uPlot.paths.bars!({ size: [0.6, 48] }), points: { show: false },
          value: (_u, v) => count(v),
        },
        {
          label: 'Cost', scale: 'usd', stroke: '#d4762c', width: 2, points: { size: 5 },
          value: (_u, v) => usd(v),
        },
      ],
    };
    this.plot = new uPlot(opts, [[], [], []], target);
    this.observer = new ResizeObserver(() => this.resize(target));
    this.observer.observe(target);
  }

  private resize(target: HTMLElement): void {
    const width = Math.max(200, Math.floor(target.clientWidth));
    const height = width < 480 ? 200 : 260;
    if (width !== this.plot.width || height !== this.plot.height) this.plot.setSize({ width, height });
  }

  /** `days` in order; tokens and cost per day (zeros for days with nothing). */
  setData(days: string[], tokens: number[], cost: number[]): void {
    const xs = days.map((d) => Date.parse(`${d}T00:00:00Z`) / 1000);
    this.plot.setData([xs, tokens, cost]);
  }

  dispose(): void {
    this.observer.disconnect();
    this.plot.destroy();
  }
}
