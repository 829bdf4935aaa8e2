/** The sign-in form: the Identity API's password grant. */

import { ApiError } from '../api';
import { h } from '../dom';
import type { Auth } from '../session';

export function signInView(auth: Auth, notice: string | null): HTMLElement {
  const email = h('input', { type: 'email', name: 'email', id: 'email', autocomplete: 'username', required: true, autofocus: true });
  const password = h('input', { type: 'password', name: 'password', id: 'password', autocomplete: 'current-password', required: true });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const message = h('p', { class: 'form-error', role: 'alert', hidden: !notice }, notice ?? '');

  const form = h('form', { class: 'signin', novalidate: true }, 
    h('h1', {}, 'Reactor Gateway'),
    h('p', { class: 'muted' }, 'Operator console: usage, fleet and registry.'),
    h('label', { for: 'email' }, 'Email'), email,
    h('label', { for: 'password' }, 'Password'), password,
    message,
    submit,
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!email.value || !password.value) {
      show('Enter your email and password.');
      return;
    }
    submit.disabled = true;
    submit.textContent = 'Signing in…';
    try {
      await auth.signIn(email.value.trim(), password.value);
      // The shell re-renders on the session change.
    } catch (error) {
      show(describe(error));
      password.value = '';
      password.focus();
    } finally {
      submit.disabled = false;
      submit.textContent = 'Sign in';
    }
  });

  function show(text: string): void {
    message.textContent = text;
    message.hidden = false;
  }

  return h('main', { class: 'signin-page', 'data-view': 'signin' }, form);
}

function describe(error: unknown): string {
  if (!(error instanceof ApiError)) return 'Sign-in failed.';
  if (error.code === 'too_many_attempts' && error.retryAfter) {
    return `Too many failed attempts; try again in ${Math.ceil(error.retryAfter / 60)} min.`;
  }
  if (error.status === 404) {
    return 'This gateway has no sign-in of its own (it uses an external Identity service).';
  }
  return error.message;
}
