// Rules pipelines and export destinations as the console shows them: rates computed from
// two polls of the services' cumulative counters, a destination's link state, and whether
// an error means the service is not enabled here.

import { ApiError, type Session } from "./api";
import { duration } from "./format";

/** A cumulative counter as one poll saw it: its value at `at` (ms since the epoch). */
export interface Sample {
  at: number;
  value: number;
}

/** Per second between two polls of a counter; null without an earlier poll, when no time
 * passed, or when the counter went down (the service restarted or data was removed). */
export function rate(prev: Sample | undefined, next: Sample): number | null {
  if (!prev) return null;
  const dt = (next.at - prev.at) / 1000;
  if (!(dt > 0) || next.value < prev.value) return null;
  return (next.value - prev.value) / dt;
}

/** The rates of several counters, each against its previous poll (kept here in between),
 * so a page that polls every few seconds can show "per second" the API does not give. */
export class Rates {
  private last = new Map<string, Sample>();

  /** The rate of `key` since it was last seen; `value` at `at` is then its last poll. */
  see(key: string, at: number, value: number): number | null {
    const r = rate(this.last.get(key), { at, value });
    this.last.set(key, { at, value });
    return r;
  }
}

/** A rate for people: "measuring" until there are two polls, then "3.2/s" or "40/s". */
export function perSecond(r: number | null, unit = ""): string {
  if (r === null) return "measuring…";
  const n = r === 0 ? "0" : r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString("en");
  return `${n}${unit ? ` ${unit}` : ""}/s`;
}

/** Whether a call through the gateway failed because the service is not on this node
 * (not enabled in its configuration), rather than down or refusing. */
export function notEnabled(e: unknown): boolean {
  return e instanceof ApiError && e.status === 404 && /^no service '/.test(e.message);
}

/** How a destination's sender is doing (export's `SendState`). */
export interface SendState {
  connected: boolean;
  lastSuccessMs?: number | null;
  lastError?: string | null;
  lastErrorMs?: number | null;
  consecutiveFailures: number;
  nextRetryMs?: number | null;
  sentItems: number;
  sentBatches: number;
  wireBytes: number;
  deadLettered: number;
}

/** A destination as export's status gives it (`GET /export/api/v3/export/status`). */
export interface Destination {
  name: string;
  kind: string;
  url: string;
  edge?: string | null;
  queue: {
    items: number;
    bytes: number;
    maxBytes: number;
    /** How long the oldest queued item has waited, when the service answered. */
    oldestAgeMs: number | null;
    priorities: { priority: string; items: number; bytes: number }[];
    droppedOverflow: number;
    expired: number;
    refused: number;
    diskFull: number;
  };
  sender: SendState & { transientFailures: number; permanentFailures: number; tooLarge: number };
}

export type LinkState = "up" | "down" | "refusing" | "idle";

/** A destination's link: down while sends fail in a row (it keeps the data and retries),
 * refusing when the receiver answers but refused items for good (dead letters), up when
 * the last send went through, idle before anything was sent. */
export function link(s: SendState): { state: LinkState; label: string } {
  if (s.consecutiveFailures > 0) {
    const n = s.consecutiveFailures;
    return { state: "down", label: `Down: ${n} failed ${n === 1 ? "attempt" : "attempts"} in a row` };
  }
  const refusedLast = s.lastErrorMs != null && (s.lastSuccessMs == null || s.lastErrorMs > s.lastSuccessMs);
  if (refusedLast) return { state: "refusing", label: "Refusing items" };
  if (s.connected) return { state: "up", label: "Up" };
  return { state: "idle", label: "Nothing sent yet" };
}

/** The class a link's state is shown with: up in green, idle plain, the rest in red. */
export function linkClass(state: LinkState): string {
  return state === "up" ? "status up" : state === "idle" ? "status" : "status down";
}

/** What a rules pipeline step does, in words. */
export type Step =
  | { type: "deadband"; delta: number }
  | { type: "downsample"; every_ms: number }
  | { type: "range"; min?: number | null; max?: number | null }
  | { type: "tumbling"; size_ms: number; functions: string[] }
  | { type: "sliding"; size_ms: number; every_ms: number; functions: string[] };

export function describeStep(s: Step): string {
  switch (s.type) {
    case "deadband":
      return `changes of at least ${s.delta}`;
    case "downsample":
      return `at most one per ${duration(s.every_ms)}`;
    case "range":
      if (s.min != null && s.max != null) return `values from ${s.min} to ${s.max}`;
      if (s.min != null) return `values from ${s.min}`;
      if (s.max != null) return `values up to ${s.max}`;
      return "any value";
    case "tumbling":
      return `${duration(s.size_ms)} windows: ${s.functions.join(", ")}`;
    case "sliding":
      return `last ${duration(s.size_ms)} every ${duration(s.every_ms)}: ${s.functions.join(", ")}`;
  }
}

/** A pipeline's alert condition. */
export interface AlertRule {
  above?: number;
  below?: number;
  rate_above?: number;
  severity: string;
  message?: string;
}

export function describeAlert(a: AlertRule): string {
  const when = [
    a.above !== undefined && `above ${a.above}`,
    a.below !== undefined && `below ${a.below}`,
    a.rate_above !== undefined && `changing faster than ${a.rate_above}/s`,
  ].filter((w): w is string => typeof w === "string");
  return `${when.join(" or ")} (${a.severity})${a.message ? `: ${a.message}` : ""}`;
}

/** A pipeline's name filter in words: patterns ending in `*` match any suffix; none: all. */
export function describeFilter(patterns: string[] | undefined, what: string): string {
  return patterns && patterns.length > 0 ? patterns.join(", ") : `every ${what}`;
}

/** What a queued (or dead) export item holds, in a few words: an event's device and
 * source, an alert's pipeline and device; anything else as it is. */
export function describeItem(data: unknown): string {
  const o = (data ?? {}) as { kind?: string; event?: Record<string, unknown>; alert?: Record<string, unknown> };
  if (o.kind === "event" && o.event) {
    const n = Array.isArray(o.event.readings) ? o.event.readings.length : 0;
    return `event of ${o.event.deviceName}/${o.event.sourceName}, ${n} ${n === 1 ? "reading" : "readings"}`;
  }
  if (o.kind === "alert" && o.alert) return `alert of ${o.alert.pipeline} on ${o.alert.deviceName}`;
  const s = typeof data === "string" ? data : JSON.stringify(data);
  return s.length > 80 ? `${s.slice(0, 79)}…` : s;
}

/** A service's answer, or that the service is not on this node. */
export type Maybe<T> = { enabled: true; value: T } | { enabled: false };

/** `call`'s answer, or `{ enabled: false }` when the gateway has no such service. */
export async function ifEnabled<T>(call: () => Promise<T>): Promise<Maybe<T>> {
  try {
    return { enabled: true, value: await call() };
  } catch (e) {
    if (notEnabled(e)) return { enabled: false };
    throw e;
  }
}

/** Something with the rates of its counters since the previous poll. */
export type Rated<T> = T & { rates: Record<string, number | null> };

/** Every export destination, with its send rates (items and bytes per second) when
 * `rates` keeps the previous poll. */
export function loadExport(session: Pick<Session, "call">, rates?: Rates): Promise<Maybe<Rated<Destination>[]>> {
  return ifEnabled(async () => {
    const r = await session.call<{ destinations: Destination[] }>("/export/api/v3/export/status");
    const at = Date.now();
    return r.destinations.map((d) => ({
      ...d,
      rates: {
        items: rates?.see(`${d.name}/items`, at, d.sender.sentItems) ?? null,
        bytes: rates?.see(`${d.name}/bytes`, at, d.sender.wireBytes) ?? null,
      },
    }));
  });
}
