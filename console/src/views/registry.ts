/** The models and aliases this gateway serves, from `GET /ai/v1/models`. */

import { AI, type ModelEntry, type ModelList } from '../api';
import { h } from '../dom';
import { contextWindow, perMillion } from '../format';
import { type Auth, authedJson } from '../session';
import { SortableTable } from '../table';
import type { View } from './view';

function chips(items: string[] | null | undefined, tone = ''): Node | string {
  return items && items.length ? h('span', { class: 'list' }, items.map((i) => h('span', { class: `badge ${tone}` }, i))) : '—';
}

export class RegistryView implements View {
  readonly title = 'Registry';
  readonly element: HTMLElement;
  readonly pollMs = 10000;
  private readonly models: SortableTable<ModelEntry>;
  private readonly aliases: SortableTable<ModelEntry>;
  private readonly filter: HTMLInputElement;
  private readonly counts: HTMLElement;
  private data: ModelEntry[] = [];

  constructor(private readonly auth: Auth) {
    this.models = new SortableTable<ModelEntry>('registry-models', [
      { key: 'id', label: 'Model', value: (m) => m.id },
      { key: 'providers', label: 'Providers', value: (m) => (m.providers ?? []).join(', '), format: (_v, m) => chips(m.providers) },
      { key: 'input', label: 'Input $/M', numeric: true, value: (m) => m.input_price_per_mtok ?? null, format: perMillion },
      { key: 'output', label: 'Output $/M', numeric: true, value: (m) => m.output_price_per_mtok ?? null, format: perMillion },
      { key: 'cached', label: 'Cached $/M', numeric: true, value: (m) => m.cached_input_price_per_mtok ?? null, format: perMillion },
      { key: 'context', label: 'Context', numeric: true, value: (m) => m.context_window ?? null, format: contextWindow },
      { key: 'capabilities', label: 'Capabilities', value: (m) => (m.capabilities ?? []).join(', '), format: (_v, m) => chips(m.capabilities, 'soft') },
    ], (m) => m.id, { emptyText: 'No model matches.' });
    this.aliases = new SortableTable<ModelEntry>('registry-aliases', [
      { key: 'id', label: 'Alias', value: (m) => m.id },
      { key: 'strategy', label: 'Strategy', value: (m) => m.strategy ?? '' },
      { key: 'targets', label: 'Targets', value: (m) => (m.targets ?? []).join(' → '), format: (_v, m) => chips(m.targets) },
    ], (m) => m.id, { emptyText: 'No alias matches.' });
    this.filter = h('input', { type: 'search', name: 'filter', placeholder: 'Filter by name, provider or capability', 'aria-label': 'Filter' });
    this.filter.addEventListener('input', () => this.render());
    this.counts = h('p', { class: 'muted' });
    this.element = h('section', { class: 'view registry', 'data-view': 'registry' },
      h('div', { class: 'toolbar' }, h('label', { class: 'field grow' }, h('span', {}, 'Filter'), this.filter)),
      this.counts,
      h('section', { class: 'card' }, h('h2', {}, 'Models'), this.models.element),
      h('section', { class: 'card' }, h('h2', {}, 'Aliases'), this.aliases.element),
    );
  }

  async refresh(signal: AbortSignal): Promise<void> {
    const list = await authedJson<ModelList>(this.auth, `${AI}/models`, signal);
    this.data = Array.isArray(list.data) ? list.data : [];
    this.render();
  }

  private render(): void {
    const needle = this.filter.value.trim().toLowerCase();
    const matches = (m: ModelEntry) => !needle || [m.id, m.strategy, ...(m.providers ?? []), ...(m.capabilities ?? []), ...(m.targets ?? [])]
      .some((s) => typeof s === 'string' && s.toLowerCase().includes(needle));
    const models = this.data.filter((m) => !m.alias && matches(m));
    const aliases = this.data.filter((m) => m.alias && matches(m));
    this.models.setRows(models);
    this.aliases.setRows(aliases);
    const all = this.data.filter((m) => !m.alias).length;
    this.counts.textContent = `${all} models and ${this.data.length - all} aliases served.`;
  }
}
