// Where in an uploaded profile each of core-metadata's complaints belongs. A YAML error
// carries its place ("... at line 7 column 6"); the checks made after parsing name the
// resource or command instead ("deviceCommand 'Set' refers to unknown deviceResource
// 'Levl'"), several of them joined by "; ": those are found in the text by the names.

/** One complaint and the line (from 1) it is about, or null when no line fits. */
export interface LineError {
  line: number | null;
  message: string;
}

const PREFIX = "invalid device profile YAML: ";

/** The complaints in `message` (core-metadata's answer to `text`), each with its line,
 * in the order of their lines (those without a line last). */
export function locateErrors(message: string, text: string): LineError[] {
  const lines = text.split(/\r?\n/);
  const parsing = message.startsWith(PREFIX);
  const body = parsing ? message.slice(PREFIX.length) : message;
  // A parse error is one message, which may itself hold "; ".
  const parts = parsing ? [body] : body.split("; ").filter((p) => p.trim().length > 0);
  const out = parts.map((m) => ({ line: lineOf(m, lines, text), message: m.trim() }));
  return out
    .map((e, i) => ({ e, i }))
    .sort((a, b) => (a.e.line ?? Infinity) - (b.e.line ?? Infinity) || a.i - b.i)
    .map(({ e }) => e);
}

function lineOf(m: string, lines: string[], text: string): number | null {
  // Where the parser was: the first place named is the problem's (a second is its context).
  const at = /\bat line (\d+) column \d+/.exec(m) ?? /\(line (\d+)\)/.exec(m);
  if (at) return clamp(Number(at[1]), lines.length);
  const pos = /\bat position (\d+)/.exec(m);
  if (pos) return lineAtByte(text, Number(pos[1]));

  const resources = sectionStart(lines, "deviceResources");
  const commands = sectionStart(lines, "deviceCommands");
  let r: RegExpExecArray | null;
  if ((r = /^deviceCommand '([^']*)' refers to unknown deviceResource '([^']*)'/.exec(m))) {
    const cmd = findKey(lines, "name", r[1], commands);
    return findKey(lines, "deviceResource", r[2], cmd ?? commands) ?? cmd;
  }
  if ((r = /^deviceResource '([^']*)' is defined twice/.exec(m))) {
    const first = findKey(lines, "name", r[1], resources);
    return (first !== null && findKey(lines, "name", r[1], first + 1)) || first;
  }
  if ((r = /^deviceResource '([^']*)': units '([^']*)'/.exec(m))) {
    const res = findKey(lines, "name", r[1], resources);
    return findKey(lines, "units", r[2], res ?? resources) ?? res;
  }
  if ((r = /^deviceResource(?: name)? '([^']*)'/.exec(m))) return findKey(lines, "name", r[1], resources);
  if ((r = /^deviceCommand(?: name)? '([^']*)'/.exec(m))) return findKey(lines, "name", r[1], commands);
  if ((r = /^deviceCommand name must not be empty/.exec(m))) return findKey(lines, "name", "", commands);
  if ((r = /^deviceResource name must not be empty/.exec(m))) return findKey(lines, "name", "", resources);
  if (/^name\b/.test(m)) return topLevelKey(lines, "name");
  // Anything else that names something: where that name is first written as a value.
  if ((r = /'([^']+)'/.exec(m))) return findAnyValue(lines, r[1]);
  return null;
}

function clamp(n: number, count: number): number | null {
  return n >= 1 ? Math.min(n, Math.max(count, 1)) : null;
}

/** The line holding byte `offset` of `text` as UTF-8 (libyaml counts bytes). */
function lineAtByte(text: string, offset: number): number {
  const bytes = new TextEncoder().encode(text).slice(0, offset);
  return new TextDecoder().decode(bytes).split("\n").length;
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** `key: value` as YAML block, flow (`{ key: value }`) or JSON writes it, value quoted or not. */
function keyValue(key: string, value: string): RegExp {
  const v = value === "" ? `(?:""|''|)` : `(?:"${esc(value)}"|'${esc(value)}'|${esc(value)})`;
  return new RegExp(`(?:^|[\\s{,-])["']?${esc(key)}["']?\\s*:\\s*${v}\\s*(?:$|[,}#])`);
}

/** The first line from index `from` (0-based) where `key` has `value`, as a line number. */
function findKey(lines: string[], key: string, value: string, from: number | null): number | null {
  const re = keyValue(key, value);
  for (let i = Math.max(0, (from ?? 1) - 1); i < lines.length; i++) if (re.test(lines[i])) return i + 1;
  return null;
}

/** The line of a section's key (`deviceResources:`), where its items start. */
function sectionStart(lines: string[], key: string): number | null {
  const re = new RegExp(`^\\s*["']?${key}["']?\\s*:`);
  const i = lines.findIndex((l) => re.test(l));
  return i < 0 ? null : i + 1;
}

/** A key of the document itself: unindented in YAML, at the outermost level in JSON. */
function topLevelKey(lines: string[], key: string): number | null {
  const yaml = new RegExp(`^["']?${esc(key)}["']?\\s*:`);
  const i = lines.findIndex((l) => yaml.test(l));
  if (i >= 0) return i + 1;
  // JSON: the key's line where the braces and brackets open before it are just one.
  const json = new RegExp(`"${esc(key)}"\\s*:`, "y");
  let depth = 0;
  for (let n = 0; n < lines.length; n++) {
    const l = lines[n];
    let str = false;
    for (let c = 0; c < l.length; c++) {
      const ch = l[c];
      if (str) {
        if (ch === "\\") c++;
        else if (ch === '"') str = false;
        continue;
      }
      if (ch === '"') {
        json.lastIndex = c;
        if (depth === 1 && json.test(l)) return n + 1;
        str = true;
      } else if (ch === "{" || ch === "[") depth++;
      else if (ch === "}" || ch === "]") depth--;
    }
  }
  return null;
}

function findAnyValue(lines: string[], value: string): number | null {
  const re = new RegExp(`:\\s*(?:"${esc(value)}"|'${esc(value)}'|${esc(value)})\\s*(?:$|[,}#])`);
  const i = lines.findIndex((l) => re.test(l));
  return i < 0 ? null : i + 1;
}

/** The lines to show of a text of `count` lines: those with errors and `around` lines
 * either side, as [first, last] ranges (from 1, inclusive); the whole text when short. */
export function excerpt(count: number, errorLines: number[], around = 3, whole = 40): [number, number][] {
  if (count <= whole || errorLines.length === 0) return count > 0 ? [[1, count]] : [];
  const out: [number, number][] = [];
  for (const n of [...new Set(errorLines)].sort((a, b) => a - b)) {
    const lo = Math.max(1, n - around);
    const hi = Math.min(count, n + around);
    const last = out[out.length - 1];
    // Ranges that touch or are one line apart are shown as one (a "…" would hide one line).
    if (last && lo <= last[1] + 2) last[1] = Math.max(last[1], hi);
    else out.push([lo, hi]);
  }
  return out;
}

/** The profile's name as the document writes it (its top-level `name:`), if it does. */
export function profileName(text: string): string | null {
  const yaml = /^name\s*:\s*(?:"([^"]*)"|'([^']*)'|([^#\n]*?))\s*(?:#.*)?$/m.exec(text);
  if (yaml) return (yaml[1] ?? yaml[2] ?? yaml[3] ?? "").trim() || null;
  try {
    const v = JSON.parse(text) as { name?: unknown };
    return typeof v.name === "string" && v.name ? v.name : null;
  } catch {
    return null;
  }
}
