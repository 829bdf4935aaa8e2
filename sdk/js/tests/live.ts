// What the tests against a running gateway need: its URL and a token (set by tests/test_js_client.py).

/** Why the live tests cannot run, or `false` when they can. */
export const noGateway: string | false =
  process.env.REACTOR_URL && process.env.REACTOR_TOKEN
    ? false
    : 'REACTOR_URL and REACTOR_TOKEN are not set (tests/test_js_client.py sets them for a gateway it runs)';

/**
 * Why sign-in cannot be tried for real, or `false` when it can: the Identity endpoint must exist
 * (`POST /auth/v1/token` answers something other than 404) and a user must have been made for
 * the tests (REACTOR_TEST_EMAIL / REACTOR_TEST_PASSWORD).
 */
export async function noIdentity(): Promise<string | false> {
  if (noGateway) return noGateway;
  const url = `${process.env.REACTOR_URL}/auth/v1/token?grant_type=password`;
  let status: number;
  try {
    const response = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
    status = response.status;
    await response.body?.cancel();
  } catch (error) {
    return `cannot reach ${url}: ${error}`;
  }
  if (status === 404) return `the gateway has no Identity service (POST ${url} answers 404)`;
  if (!process.env.REACTOR_TEST_EMAIL || !process.env.REACTOR_TEST_PASSWORD) {
    throw new Error(
      `the Identity service answers at ${url} (HTTP ${status}) but no test user was given ` +
        '(REACTOR_TEST_EMAIL / REACTOR_TEST_PASSWORD)',
    );
  }
  return false;
}

/**
 * Stand-ins for `process` and `console` that a snippet can use as printed (`process.env`,
 * `process.stdout.write`, `console.log`) while what it prints is collected in `output()`. (The
 * test runner talks to its parent over the real stdout, so that cannot be swapped.)
 */
export function printing() {
  let out = '';
  const stdout = {
    write(chunk: string | Uint8Array): boolean {
      out += typeof chunk === 'string' ? chunk : new TextDecoder().decode(chunk);
      return true;
    },
  };
  return {
    process: { env: globalThis.process.env, stdout },
    console: {
      log(...args: unknown[]): void {
        out += args.map(String).join(' ') + '\n';
      },
    },
    output: () => out,
  };
}
