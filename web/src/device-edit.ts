// What a device's settings page checks before it sends a change: labels as typed, and
// autoEvent intervals as EdgeX writes them (Go durations: "10s", "500ms", "1m30s"), so a
// mistake is shown beside its field instead of coming back from core-metadata.

/** Labels typed as "a, b c": split on commas and spaces, empty ones dropped, each once. */
export function parseLabels(text: string): string[] {
  return [...new Set(text.split(/[\s,]+/).filter((l) => l.length > 0))];
}

const UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, "µs": 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** An interval in milliseconds, or why it is not one (as core-metadata would say). */
export function intervalMs(text: string): { ok: true; ms: number } | { ok: false; error: string } {
  const s = text.trim();
  if (s === "") return { ok: false, error: "an interval is needed, e.g. 10s or 500ms" };
  let total = 0;
  const part = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/y;
  let at = 0;
  while (at < s.length) {
    part.lastIndex = at;
    const m = part.exec(s);
    if (!m) return { ok: false, error: `'${s}' is not a duration: write e.g. 10s, 500ms or 1m30s` };
    total += Number(m[1]) * UNIT_MS[m[2]];
    at = part.lastIndex;
  }
  if (!(total > 0)) return { ok: false, error: "the interval must be more than zero" };
  if (total < 10) return { ok: false, error: "readings more often than every 10 ms would flood the node" };
  return { ok: true, ms: total };
}
