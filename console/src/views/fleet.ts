/**
 * The fleet now, from `GET /ai/v1/fleet` (administrators only): per provider pool its live
 * workers, job slots, queued and running jobs and cooling routes, and the registry in use. A pool
 * with no live worker is what an operator must see first, so it is marked and sorted to the top.
 */

import { AI, type Fleet, type Pool } from '../api';
import { fill, h } from '../dom';
import { clock, count, timeOfDay } from '../format';
import { type Auth, authedJson } from '../session';
import { SortableTable } from '../table';
import type { View } from './view';

export class FleetView implements View {
  readonly title = 'Fleet';
  readonly element: HTMLElement;
  readonly pollMs = 2000;
  private readonly pools: SortableTable<Pool>;
  private readonly summary: HTMLElement;
  private readonly registry: HTMLElement;

  constructor(private readonly auth: Auth) {
    this.pools = new SortableTable<Pool>('fleet-pools', [
      { key: 'provider', label: 'Pool', value: (p) => p.provider },
      {
        key: 'live_workers', label: 'Live workers', numeric: true, value: (p) => p.live_workers,
        format: (v: number) => (v === 0 ? h('span', { class: 'badge bad' }, '0 · none alive') : h('span', { class: 'badge good' }, count(v))),
      },
      { key: 'slots', label: 'Slots', numeric: true, value: (p) => p.slots, format: count },
      { key: 'queued', label: 'Queued', numeric: true, value: (p) => p.queued, format: count },
      { key: 'running', label: 'Running', numeric: true, value: (p) => p.running, format: count },
      {
        key: 'cooling_routes', label: 'Cooling routes', value: (p) => p.cooling_routes.length,
        format: (_v: number, p: Pool) => (p.cooling_routes.length
          ? h('span', { class: 'list' }, p.cooling_routes.map((r) => h('span', { class: 'badge warn' }, r)))
          : 'none'),
      },
    ], (p) => p.provider, { sortKey: 'live_workers', descending: false, emptyText: 'No provider is enabled.' });
    this.summary = h('div', { class: 'totals' });
    this.registry = h('dl', { class: 'facts' });
    this.element = h('section', { class: 'view fleet', 'data-view': 'fleet' },
      this.summary,
      h('section', { class: 'card' }, h('h2', {}, 'Provider pools'), this.pools.element),
      h('section', { class: 'card' }, h('h2', {}, 'Registry'), this.registry),
    );
  }

  async refresh(signal: AbortSignal): Promise<void> {
    const fleet = await authedJson<Fleet>(this.auth, `${AI}/fleet`, signal);
    this.pools.setRows(fleet.pools);
    const dead = fleet.pools.filter((p) => p.live_workers === 0).length;
    const tile = (key: string, label: string, value: number, shown: string, tone = '') =>
      h('div', { class: `tile ${tone}`, 'data-total': key, 'data-value': String(value) },
        h('span', { class: 'label' }, label), h('span', { class: 'value' }, shown));
    const sum = (f: (p: Pool) => number) => fleet.pools.reduce((n, p) => n + f(p), 0);
    fill(this.summary,
      tile('live_workers', 'Live workers', sum((p) => p.live_workers), count(sum((p) => p.live_workers))),
      tile('pools_down', 'Pools without a worker', dead, count(dead), dead ? 'bad' : 'good'),
      tile('queued', 'Queued', sum((p) => p.queued), count(sum((p) => p.queued))),
      tile('running', 'Running', sum((p) => p.running), count(sum((p) => p.running))),
      tile('open_requests', 'Open requests here', fleet.open_requests, count(fleet.open_requests)),
    );
    const r = fleet.registry;
    fill(this.registry,
      h('dt', {}, 'Source'), h('dd', {}, r.source),
      h('dt', {}, 'Version'), h('dd', {}, String(r.version)),
      h('dt', {}, 'Loaded'), h('dd', {}, clock(r.loaded_at)),
      h('dt', {}, 'Last reload'),
      h('dd', { 'data-registry-status': r.last_error ? 'error' : 'ok' },
        r.last_error ? h('span', { class: 'badge bad' }, `failed: ${r.last_error}`) : h('span', { class: 'badge good' }, 'ok')),
      h('dt', {}, 'As of'), h('dd', {}, timeOfDay(new Date(fleet.timestamp * 1000))),
    );
  }
}
