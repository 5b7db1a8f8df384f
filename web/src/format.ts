// Sizes, lengths of time and counts as every page writes them for people, so the same
// quantity reads the same on each page.

function trim(s: string): string {
  return s.replace(/\.0$/, "");
}

/** Bytes in B, KiB, MiB, GiB: one decimal under ten, none above. */
export function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  if (i === 0) return `${n} B`;
  return `${v < 10 ? trim(v.toFixed(1)) : Math.round(v)} ${units[i]}`;
}

/** A length of time for people: "500 ms", "5 s", "1.5 min", "2 h", "90 days". */
export function duration(ms: number): string {
  const s = ms / 1000;
  if (ms < 1000) return `${ms} ms`;
  if (s < 60) return `${trim(s.toFixed(1))} s`;
  if (s < 3600) return `${trim((s / 60).toFixed(1))} min`;
  if (s < 86400) return `${trim((s / 3600).toFixed(1))} h`;
  const d = trim((s / 86400).toFixed(1));
  return `${d} ${d === "1" ? "day" : "days"}`;
}

/** `n` things: "1 artifact", "3 artifacts", "1,024 devices" (the plural with an "s"; the
 * number as the browser's language writes it, as elsewhere on the pages). */
export function count(n: number, what: string): string {
  return `${n.toLocaleString()} ${what}${n === 1 ? "" : "s"}`;
}
