// The overview's summary of the node: storage and its retention bounds (core-data's
// `GET /api/v3/retention`), the export queues at a glance, and the newest notifications.

import { link, type Destination } from "./dataflow";
import { duration } from "./format";

/** core-data's retention status: its bounds and what is stored. */
export interface Retention {
  enabled: boolean;
  intervalMs: number;
  maxCap: number;
  minCap: number;
  maxAgeSeconds: number;
  storedEvents: number;
  storedReadings: number;
  /** Outpost's addition: what the stored data takes on disk, bytes. */
  storedBytes?: number;
  run?: {
    state: string;
    started: number;
    finished?: number;
    removedReadings: number;
    removedEvents: number;
    error?: string;
  } | null;
}

/** How long readings are kept, in words. */
export function retentionText(r: Retention): string {
  if (!r.enabled) return "Retention is off: readings are kept until they are deleted.";
  const bounds = [
    r.maxCap > 0 &&
      `above ${r.maxCap.toLocaleString("en")} readings the oldest go until ${r.minCap.toLocaleString("en")} remain`,
    r.maxAgeSeconds > 0 && `readings older than ${duration(r.maxAgeSeconds * 1000)} go`,
  ].filter((b): b is string => typeof b === "string");
  if (bounds.length === 0) return "Retention is on but sets no bound: readings are kept.";
  const text = bounds.join("; ");
  return `${text[0].toUpperCase()}${text.slice(1)}.`;
}

/** The share of the reading cap in use (0–1), or null without a cap. */
export function capShare(r: Retention): number | null {
  if (!r.enabled || r.maxCap <= 0) return null;
  return Math.min(1, r.storedReadings / r.maxCap);
}

/** A share as a percentage for people: "0.4 %", "35 %", and "< 0.1 %" for a sliver. */
export function percent(share: number): string {
  const p = share * 100;
  if (p > 0 && p < 0.1) return "< 0.1 %";
  return `${p < 10 ? p.toFixed(1).replace(/\.0$/, "") : Math.round(p)} %`;
}

/** The export queues in one line's worth: items waiting and destinations not up. */
export function exportSummary(dests: Destination[]): { items: number; notUp: string[] } {
  return {
    items: dests.reduce((n, d) => n + d.queue.items, 0),
    notUp: dests.filter((d) => link(d.sender).state === "down" || link(d.sender).state === "refusing").map((d) => d.name),
  };
}

/** A stored notification (support-notifications). */
export interface Notification {
  id: string;
  category?: string;
  content: string;
  description?: string;
  sender: string;
  severity: string;
  status?: string;
  acknowledged: boolean;
  /** Milliseconds since the epoch. */
  created?: number;
}

/** The `n` newest, newest first (the service lists them so; kept so whatever the order). */
export function newest(list: Notification[], n: number): Notification[] {
  return [...list].sort((a, b) => (b.created ?? 0) - (a.created ?? 0)).slice(0, n);
}

/** EdgeX severities: CRITICAL stands out, NORMAL and MINOR do not. */
export function severityClass(severity: string): string {
  return severity === "CRITICAL" ? "status down" : "";
}

/** A node event from `GET /api/v3/stream/node`, as the overview lists it. */
export interface NodeEvent {
  /** ms since the epoch. */
  at: number;
  /** `alert` or `system`. */
  kind: string;
  /** An alert's severity; system events have none. */
  severity?: string;
  what: string;
}

const DONE: Record<string, string> = { add: "added", update: "updated", delete: "removed" };

/** What a stream event says, in words; null for what is not a node event. */
export function nodeEvent(kind: string, data: string): NodeEvent | null {
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(data) as Record<string, unknown>;
  } catch {
    return null;
  }
  const text = (k: string) => (typeof v[k] === "string" ? (v[k] as string) : "");
  if (kind === "alert") {
    const origin = typeof v.origin === "number" ? v.origin / 1e6 : Date.now();
    const about = `${text("deviceName")} ${text("resourceName")} ${text("value")}`.trim();
    const message = text("message") || text("condition");
    return {
      at: origin,
      kind,
      severity: text("severity") || "info",
      what: `${message}: ${about} (${text("condition")}, pipeline ${text("pipeline")})`,
    };
  }
  if (kind === "system") {
    const details = v.details && typeof v.details === "object" ? (v.details as Record<string, unknown>) : {};
    const name = typeof details.name === "string" ? ` ${details.name}` : "";
    const action = text("action");
    return {
      at: typeof v.timestamp === "number" ? v.timestamp / 1e6 : Date.now(),
      kind,
      what: `${text("type")}${name} ${DONE[action] ?? action} by ${text("source")}`,
    };
  }
  return null;
}
