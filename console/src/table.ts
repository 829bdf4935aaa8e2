/**
 * A sortable table that keeps its sort order and scroll position while the views poll: rows are
 * replaced in place, never the whole view. Each cell carries its column's label (`data-label`,
 * shown beside the value when a phone stacks the cells) and its raw value (`data-value`), so
 * what is shown formatted can still be read and compared exactly.
 */

import { h } from './dom';

export interface Column<T> {
  key: string;
  label: string;
  value: (row: T) => string | number | null;
  /** The text shown; the raw value as a string when absent. */
  format?: (value: any, row: T) => string | Node;
  numeric?: boolean;
  title?: string;
}

export class SortableTable<T> {
  readonly element: HTMLElement;
  private readonly head: HTMLTableRowElement;
  private readonly body: HTMLTableSectionElement;
  private readonly empty: HTMLElement;
  private rows: T[] = [];
  private sortKey: string;
  private descending: boolean;

  constructor(
    name: string,
    private readonly columns: Column<T>[],
    private readonly rowKey: (row: T) => string,
    options: { sortKey?: string; descending?: boolean; emptyText?: string } = {},
  ) {
    this.sortKey = options.sortKey ?? columns[0].key;
    this.descending = options.descending ?? false;
    this.head = h('tr');
    this.body = h('tbody');
    this.empty = h('p', { class: 'empty', hidden: true }, options.emptyText ?? 'Nothing to show.');
    const table = h('table', { class: 'data', 'data-table': name }, h('thead', {}, this.head), this.body);
    this.element = h('div', { class: 'table-wrap' }, table, this.empty);
    this.renderHead();
  }

  setRows(rows: T[]): void {
    this.rows = rows;
    this.renderBody();
  }

  private sortBy(key: string): void {
    if (this.sortKey === key) {
      this.descending = !this.descending;
    } else {
      this.sortKey = key;
      this.descending = !!this.columns.find((c) => c.key === key)?.numeric;
    }
    this.renderHead();
    this.renderBody();
  }

  private renderHead(): void {
    this.head.replaceChildren(
      ...this.columns.map((column) => {
        const sorted = column.key === this.sortKey;
        const button = h(
          'button',
          { type: 'button', class: 'sort', onclick: () => this.sortBy(column.key), title: column.title ?? `Sort by ${column.label}` },
          column.label,
          h('span', { class: 'arrow', 'aria-hidden': 'true' }, sorted ? (this.descending ? ' ▼' : ' ▲') : ''),
        );
        return h('th', {
          scope: 'col',
          class: column.numeric ? 'num' : null,
          'data-key': column.key,
          'aria-sort': sorted ? (this.descending ? 'descending' : 'ascending') : 'none',
        }, button);
      }),
    );
  }

  private renderBody(): void {
    const column = this.columns.find((c) => c.key === this.sortKey) ?? this.columns[0];
    const sign = this.descending ? -1 : 1;
    const sorted = [...this.rows].sort((a, b) => {
      const x = column.value(a);
      const y = column.value(b);
      if (x === y) return this.rowKey(a).localeCompare(this.rowKey(b));
      if (x === null) return 1;
      if (y === null) return -1;
      return (typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y))) * sign;
    });
    this.body.replaceChildren(
      ...sorted.map((row) =>
        h('tr', { 'data-key': this.rowKey(row) },
          this.columns.map((c) => {
            const value = c.value(row);
            const shown = c.format ? c.format(value, row) : value === null ? '—' : String(value);
            return h('td', {
              class: c.numeric ? 'num' : null,
              'data-col': c.key,
              'data-label': c.label,
              'data-value': value === null ? '' : String(value),
            }, shown);
          }),
        ),
      ),
    );
    this.empty.hidden = this.rows.length > 0;
  }
}
