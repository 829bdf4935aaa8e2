/**
 * Usage and cost from `GET /ai/v1/usage`: totals, a chart per day, and sortable tables by model,
 * by provider and (for administrators) by user. The gateway decides what a caller may see: a plain
 * user's report is their own whatever the page asks, so the page only leaves out the by-user table
 * for them.
 */

import { AI, type UsageGroup, type UsageGrouping, type UsageReport } from '../api';
import { fill, h } from '../dom';
import { addDays, count, daysBetween, todayUtc, usd } from '../format';
import { type Auth, authedJson } from '../session';
import { SortableTable, type Column } from '../table';
import { DailyChart } from './chart';
import type { View } from './view';

type Preset = 'today' | '7d' | '30d' | 'month' | 'custom';

const PRESETS: [Preset, string][] = [
  ['today', 'Today'],
  ['7d', 'Last 7 days'],
  ['30d', 'Last 30 days'],
  ['month', 'This month'],
  ['custom', 'Custom'],
];

function rangeOf(preset: Preset): [string, string] | null {
  const today = todayUtc();
  switch (preset) {
    case 'today': return [today, today];
    case '7d': return [addDays(today, -6), today];
    case '30d': return [addDays(today, -29), today];
    case 'month': return [`${today.slice(0, 8)}01`, today];
    default: return null;
  }
}

function groupColumns(by: UsageGrouping, label: string, you: string | null): Column<UsageGroup>[] {
  return [
    {
      key: by, label, value: (g) => g[by] ?? '',
      format: (v: string) => (by === 'user' && v === you ? h('span', {}, v, h('span', { class: 'tag' }, 'you')) : v),
    },
    { key: 'requests', label: 'Requests', numeric: true, value: (g) => g.requests, format: count },
    { key: 'tokens_in', label: 'Tokens in', numeric: true, value: (g) => g.tokens_in, format: count },
    { key: 'tokens_out', label: 'Tokens out', numeric: true, value: (g) => g.tokens_out, format: count },
    { key: 'cost_usd', label: 'Cost', numeric: true, value: (g) => g.cost_usd, format: usd },
  ];
}

export class UsageView implements View {
  readonly title = 'Usage';
  readonly element: HTMLElement;
  readonly pollMs = 5000;
  private preset: Preset = '7d';
  private readonly since: HTMLInputElement;
  private readonly until: HTMLInputElement;
  private readonly userFilter: HTMLInputElement | null;
  private readonly modelFilter: HTMLInputElement;
  private readonly totals: HTMLElement;
  private readonly chart = new DailyChart();
  private readonly byModel: SortableTable<UsageGroup>;
  private readonly byProvider: SortableTable<UsageGroup>;
  private readonly byUser: SortableTable<UsageGroup> | null;
  private readonly scope: HTMLElement;

  constructor(private readonly auth: Auth, private readonly onChange: () => void) {
    const session = auth.session!;
    const admin = session.admin;
    const [since, until] = rangeOf(this.preset)!;
    const today = todayUtc();
    this.since = h('input', { type: 'date', name: 'since', value: since, max: today, 'aria-label': 'From (UTC)' });
    this.until = h('input', { type: 'date', name: 'until', value: until, max: today, 'aria-label': 'To (UTC)' });
    const presets = h('select', { name: 'period', 'aria-label': 'Period' },
      PRESETS.map(([value, label]) => h('option', { value, selected: value === this.preset }, label)));
    presets.addEventListener('change', () => {
      this.preset = presets.value as Preset;
      const range = rangeOf(this.preset);
      if (range) [this.since.value, this.until.value] = range;
      this.onChange();
    });
    for (const [input, other] of [[this.since, this.until], [this.until, this.since]]) {
      input.addEventListener('change', () => {
        this.preset = 'custom';
        presets.value = 'custom';
        // The day just picked wins: an inverted range is narrowed to that one day.
        if (input.value && other.value && this.since.value > this.until.value) other.value = input.value;
        this.onChange();
      });
    }
    this.modelFilter = h('input', { type: 'search', name: 'model', placeholder: 'all models', 'aria-label': 'Model', list: 'usage-models' });
    this.userFilter = admin ? h('input', { type: 'search', name: 'user', placeholder: 'all users', 'aria-label': 'User id' }) : null;
    let timer: number | undefined;
    for (const input of [this.modelFilter, this.userFilter]) {
      input?.addEventListener('input', () => {
        window.clearTimeout(timer);
        timer = window.setTimeout(() => this.onChange(), 400);
      });
    }

    this.totals = h('div', { class: 'totals' });
    this.byModel = new SortableTable('usage-by-model', groupColumns('model', 'Model', null), (g) => g.model ?? '',
      { sortKey: 'cost_usd', descending: true, emptyText: 'No usage in this period.' });
    this.byProvider = new SortableTable('usage-by-provider', groupColumns('provider', 'Provider', null), (g) => g.provider ?? '',
      { sortKey: 'cost_usd', descending: true, emptyText: 'No usage in this period.' });
    this.byUser = admin
      ? new SortableTable('usage-by-user', groupColumns('user', 'User', session.userId), (g) => g.user ?? '',
        { sortKey: 'cost_usd', descending: true, emptyText: 'No usage in this period.' })
      : null;
    this.scope = h('p', { class: 'muted scope' });

    this.element = h('section', { class: 'view usage', 'data-view': 'usage' },
      h('div', { class: 'toolbar' },
        h('label', { class: 'field' }, h('span', {}, 'Period'), presets),
        h('label', { class: 'field' }, h('span', {}, 'From (UTC)'), this.since),
        h('label', { class: 'field' }, h('span', {}, 'To (UTC)'), this.until),
        h('label', { class: 'field' }, h('span', {}, 'Model'), this.modelFilter),
        this.userFilter && h('label', { class: 'field' }, h('span', {}, 'User'), this.userFilter),
        h('datalist', { id: 'usage-models' }),
      ),
      this.scope,
      this.totals,
      this.chart.element,
      h('div', { class: 'grid' },
        h('section', { class: 'card' }, h('h2', {}, 'By model'), this.byModel.element),
        h('section', { class: 'card' }, h('h2', {}, 'By provider'), this.byProvider.element),
        this.byUser && h('section', { class: 'card wide' }, h('h2', {}, 'By user'), this.byUser.element),
      ),
    );
  }

  private url(by: UsageGrouping): string {
    const params = new URLSearchParams({ by });
    if (this.since.value) params.set('since', this.since.value);
    if (this.until.value) params.set('until', this.until.value);
    const model = this.modelFilter.value.trim();
    if (model) params.set('model', model);
    const user = this.userFilter?.value.trim();
    if (user) params.set('user', user);
    return `${AI}/usage?${params}`;
  }

  async refresh(signal: AbortSignal): Promise<void> {
    const groupings: UsageGrouping[] = this.byUser ? ['day', 'model', 'provider', 'user'] : ['day', 'model', 'provider'];
    const reports = await Promise.all(groupings.map((by) => authedJson<UsageReport>(this.auth, this.url(by), signal)));
    const [daily, models, providers, users] = reports;
    this.renderTotals(daily);
    const days = daysBetween(daily.since, daily.until);
    const perDay = new Map(daily.groups.map((g) => [g.day, g]));
    this.chart.setData(days, days.map((d) => (perDay.get(d)?.tokens_in ?? 0) + (perDay.get(d)?.tokens_out ?? 0)),
      days.map((d) => perDay.get(d)?.cost_usd ?? 0));
    this.byModel.setRows(models.groups);
    this.byProvider.setRows(providers.groups);
    this.byUser?.setRows(users.groups);
    const datalist = this.element.querySelector('#usage-models');
    if (datalist) fill(datalist, models.groups.map((g) => h('option', { value: g.model ?? '' })));
    const who = daily.user === null ? 'every user' : daily.user === this.auth.session?.userId ? 'you' : daily.user;
    this.scope.textContent = `${daily.since} to ${daily.until} (UTC), ${who}${daily.model ? `, model ${daily.model}` : ''}.`;
  }

  private renderTotals(report: UsageReport): void {
    const t = report.totals;
    const tile = (key: string, label: string, value: number, shown: string) =>
      h('div', { class: 'tile', 'data-total': key, 'data-value': String(value) }, h('span', { class: 'label' }, label),
        h('span', { class: 'value' }, shown));
    fill(this.totals,
      tile('requests', 'Requests', t.requests, count(t.requests)),
      tile('tokens_in', 'Tokens in', t.tokens_in, count(t.tokens_in)),
      tile('tokens_out', 'Tokens out', t.tokens_out, count(t.tokens_out)),
      tile('cost_usd', 'Cost', t.cost_usd, usd(t.cost_usd)),
    );
  }

  dispose(): void {
    this.chart.dispose();
  }
}
