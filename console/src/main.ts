/**
 * The console's shell: sign-in, the header with its tabs, and one view at a time chosen by the
 * URL's hash (#/usage, #/fleet, #/registry). The current view is refreshed every few seconds in
 * place, never by reloading the page, and not at all while the tab is hidden.
 */

import './style.css';

import { ApiError, isAbort } from './api';
import { fill, h } from './dom';
import { timeOfDay } from './format';
import { Auth } from './session';
import { FleetView } from './views/fleet';
import { RegistryView } from './views/registry';
import { signInView } from './views/signin';
import { UsageView } from './views/usage';
import type { View } from './views/view';

type Route = 'usage' | 'fleet' | 'registry';

const app = document.getElementById('app')!;
const auth = new Auth();

let view: View | null = null;
let poll: Poller | null = null;

class Poller {
  private timer: number | undefined;
  private controller: AbortController | null = null;
  private stopped = false;
  private readonly onVisibility = () => {
    if (!document.hidden) this.run();
  };

  constructor(private readonly view: View, private readonly status: HTMLElement) {
    document.addEventListener('visibilitychange', this.onVisibility);
    this.run();
  }

  /** Refresh now (a filter changed), then keep the rhythm. */
  run(): void {
    if (this.stopped) return;
    window.clearTimeout(this.timer);
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.status.dataset.state = 'loading';
    this.view.refresh(controller.signal).then(
      () => {
        if (controller.signal.aborted) return;
        this.status.dataset.state = 'ok';
        this.status.textContent = `Updated ${timeOfDay()} · every ${this.view.pollMs / 1000} s`;
      },
      (error: unknown) => {
        if (controller.signal.aborted || isAbort(error)) return;
        this.status.dataset.state = 'error';
        this.status.textContent = describe(error);
      },
    ).finally(() => {
      if (controller.signal.aborted || this.stopped) return;
      if (!document.hidden) this.timer = window.setTimeout(() => this.run(), this.view.pollMs);
    });
  }

  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.timer);
    this.controller?.abort();
    document.removeEventListener('visibilitychange', this.onVisibility);
  }
}

function describe(error: unknown): string {
  if (error instanceof ApiError) {
    if (error.status === 0) return 'Cannot reach the gateway; retrying.';
    if (error.status === 403) return `Not allowed: ${error.message}`;
    return `${error.message}${error.code ? ` (${error.code})` : ''}; retrying.`;
  }
  return `The view failed: ${error instanceof Error ? error.message : String(error)}`;
}

function currentRoute(): Route {
  const route = location.hash.replace(/^#\/?/, '').split(/[?/]/)[0];
  return route === 'fleet' || route === 'registry' ? route : 'usage';
}

function leave(): void {
  poll?.stop();
  poll = null;
  view?.dispose?.();
  view = null;
}

function render(notice: string | null = null): void {
  leave();
  const session = auth.session;
  if (!session) {
    document.title = 'Sign in · Reactor Gateway';
    fill(app, signInView(auth, notice));
    (app.querySelector('input[name="email"]') as HTMLInputElement | null)?.focus();
    return;
  }
  const route = currentRoute();
  const tabs: [Route, string][] = [['usage', 'Usage'], ...(session.admin ? [['fleet', 'Fleet'] as [Route, string]] : []), ['registry', 'Registry']];
  const nav = h('nav', { class: 'tabs', 'aria-label': 'Views' },
    tabs.map(([id, label]) => h('a', { href: `#/${id}`, 'data-tab': id, 'aria-current': id === route ? 'page' : null }, label)));
  const signOut = h('button', { type: 'button', class: 'link', 'data-action': 'sign-out' }, 'Sign out');
  signOut.addEventListener('click', () => void auth.signOut());
  const status = h('p', { class: 'status', role: 'status', 'data-state': 'loading' }, 'Loading…');
  const header = h('header', { class: 'top' },
    h('div', { class: 'brand' }, h('span', { class: 'logo', 'aria-hidden': 'true' }), 'Reactor Gateway'),
    nav,
    h('div', { class: 'who' },
      h('span', { class: 'email', 'data-user': session.userId, title: session.userId }, session.email ?? session.userId),
      session.admin && h('span', { class: 'badge soft' }, 'admin'),
      signOut),
  );

  if (route === 'fleet' && !session.admin) {
    document.title = 'Fleet · Reactor Gateway';
    fill(app, header, h('main', { class: 'content' },
      h('section', { class: 'view', 'data-view': 'fleet-denied' },
        h('p', { class: 'notice' }, 'The fleet view is for administrators (users added with --admin).'))));
    return;
  }
  const next: View = route === 'fleet' ? new FleetView(auth) : route === 'registry' ? new RegistryView(auth)
    : new UsageView(auth, () => poll?.run());
  view = next;
  document.title = `${next.title} · Reactor Gateway`;
  fill(app, header, h('main', { class: 'content' }, h('div', { class: 'heading' }, h('h1', {}, next.title), status), next.element));
  poll = new Poller(next, status);
}

auth.onChange((_session, reason) => render(reason));
window.addEventListener('hashchange', () => render());
render();
