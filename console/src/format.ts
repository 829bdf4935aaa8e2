/** How numbers, money and dates read in the console. Days are UTC, as the usage counters are. */

const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const dollars = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', minimumFractionDigits: 2, maximumFractionDigits: 2 });
const cents = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', minimumFractionDigits: 4, maximumFractionDigits: 4 });
const tiny = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', maximumSignificantDigits: 3 });
const price = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', minimumFractionDigits: 2, maximumFractionDigits: 4 });

export function count(n: number | null | undefined): string {
  return n === null || n === undefined ? '—' : integer.format(n);
}

/** Costs span many orders of magnitude (a test request costs millionths of a dollar). */
export function usd(n: number | null | undefined): string {
  if (n === null || n === undefined) return '—';
  if (n === 0) return '$0.00';
  const a = Math.abs(n);
  if (a >= 1) return dollars.format(n);
  if (a >= 0.01) return cents.format(n);
  return tiny.format(n);
}

/** A price per million tokens. */
export function perMillion(n: number | null | undefined): string {
  return n === null || n === undefined ? '—' : price.format(n);
}

export function contextWindow(n: number | null | undefined): string {
  if (!n) return '—';
  if (n >= 1_000_000) return `${+(n / 1_000_000).toFixed(2)}M`;
  if (n >= 1000) return `${Math.round(n / 1000)}K`;
  return String(n);
}

/** `YYYY-MM-DD` of a Date, in UTC. */
export function isoDay(d: Date): string {
  return d.toISOString().slice(0, 10);
}

export function todayUtc(): string {
  return isoDay(new Date());
}

export function addDays(day: string, n: number): string {
  const d = new Date(`${day}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + n);
  return isoDay(d);
}

/** Every day from `since` to `until`, both included. */
export function daysBetween(since: string, until: string): string[] {
  const days: string[] = [];
  for (let day = since; day <= until && days.length < 1000; day = addDays(day, 1)) days.push(day);
  return days;
}

export function clock(epochSeconds: number | null | undefined): string {
  if (!epochSeconds) return '—';
  return new Date(epochSeconds * 1000).toLocaleString();
}

export function timeOfDay(d: Date = new Date()): string {
  return d.toLocaleTimeString();
}
