// The firmware page's logic, apart from the page: signature files read and checked against
// the chosen firmware, rollout policies parsed from the form, rollout progress counted,
// which actions a rollout's state allows.
import { bytes } from "./format";

/** An artifact's signed manifest (crates/outpost-manifest). */
export interface Manifest {
  name: string;
  version: string;
  compatible: string[];
  size: number;
  sha256: string;
  payloadType: string;
}

/** What `outpost ota sign FILE` writes to `FILE.sig.json`, with the manifest decoded. */
export interface Signed {
  /** Base64 of the manifest's bytes, sent as is (the signature is over those bytes). */
  manifestBase64: string;
  signature: string;
  manifest: Manifest;
}

export type Result<T> = { ok: true; value: T } | { ok: false; error: string };

const NOT_SIG = "this is not a signature file from `outpost ota sign` (FILE.sig.json)";

/** Reads a signature file's text: its manifest decoded and checked for the fields it must
 * have, so the page can say what it is before anything is sent. */
export function parseSignatureFile(text: string): Result<Signed> {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { ok: false, error: NOT_SIG };
  }
  if (!raw || typeof raw !== "object") return { ok: false, error: NOT_SIG };
  const { manifest, signature } = raw as Record<string, unknown>;
  if (typeof manifest !== "string" || typeof signature !== "string" || !signature) {
    return { ok: false, error: NOT_SIG };
  }
  let m: Record<string, unknown>;
  try {
    const octets = Uint8Array.from(atob(manifest.trim()), (c) => c.charCodeAt(0));
    m = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(octets));
  } catch {
    return { ok: false, error: "the signature file's manifest is not base64 of JSON" };
  }
  const ok =
    m &&
    typeof m === "object" &&
    typeof m.name === "string" &&
    typeof m.version === "string" &&
    Array.isArray(m.compatible) &&
    m.compatible.every((c) => typeof c === "string") &&
    typeof m.size === "number" &&
    Number.isSafeInteger(m.size) &&
    m.size >= 0 &&
    typeof m.sha256 === "string" &&
    /^[0-9a-fA-F]{64}$/.test(m.sha256) &&
    typeof m.payloadType === "string";
  if (!ok) return { ok: false, error: "the signature file's manifest lacks name, version, compatible, size or sha256" };
  return {
    ok: true,
    value: {
      manifestBase64: manifest.trim(),
      signature: signature.trim(),
      manifest: { ...(m as unknown as Manifest), sha256: (m.sha256 as string).toLowerCase() },
    },
  };
}

/** Lower-case hex of bytes (a SHA-256 from crypto.subtle). */
export function hex(data: ArrayBuffer | Uint8Array): string {
  return [...new Uint8Array(data)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Why the chosen file is not the one the manifest was signed for, or null when it is.
 * `sha256` null: the browser could not hash it (only the size is compared). */
export function fileMismatch(m: Manifest, fileName: string, size: number, sha256: string | null): string | null {
  const what = `${m.name} ${m.version}`;
  if (size !== m.size) {
    return `${fileName} is not the file signed as ${what}: it has ${bytes(size)} (${size} bytes), the signature is for ${bytes(m.size)} (${m.size} bytes). Choose the firmware file the signature file was made for.`;
  }
  if (sha256 !== null && sha256.toLowerCase() !== m.sha256) {
    return `${fileName} is not the file signed as ${what}: its SHA-256 differs from the signed one. Choose the firmware file the signature file was made for.`;
  }
  return null;
}

/** Rollout and group names, as ota takes them. */
export function validName(n: string): boolean {
  return /^[A-Za-z0-9_.-]{1,128}$/.test(n);
}

/** Cumulative phase percentages from "1, 10, 100": increasing, in (0, 100], the last 100
 * (what ota's policy check asks). */
export function parsePhases(text: string): Result<number[]> {
  const parts = text.split(/[\s,]+/).filter((p) => p.length > 0);
  const err = { ok: false as const, error: "increasing percentages up to 100, e.g. 1, 10, 100" };
  if (parts.length === 0) return err;
  const v = parts.map((p) => Number(p.replace(/%$/, "")));
  if (v.some((p) => !Number.isFinite(p) || p <= 0 || p > 100)) return err;
  if (v.some((p, i) => i > 0 && p <= v[i - 1]) || v[v.length - 1] !== 100) return err;
  return { ok: true, value: v };
}

/** A daily maintenance window (UTC) from two `HH:MM` fields; none when both are empty. */
export function parseWindow(start: string, end: string): Result<{ start: string; end: string } | null> {
  const s = start.trim();
  const e = end.trim();
  if (!s && !e) return { ok: true, value: null };
  const hhmm = /^([01]\d|2[0-3]):[0-5]\d$/;
  if (!hhmm.test(s) || !hhmm.test(e)) return { ok: false, error: "a window has a start and an end, HH:MM (UTC)" };
  if (s === e) return { ok: false, error: "a window's start and end differ" };
  return { ok: true, value: { start: s, end: e } };
}

/** Device states in a rollout (ota's DeviceState names). */
export type DeviceState =
  | "waiting"
  | "offered"
  | "downloading"
  | "installing"
  | "succeeded"
  | "failed"
  | "rolledBack"
  | "canceled";

export type Counts = Partial<Record<DeviceState, number>>;

/** A phase's or a rollout's devices, in the groups the page shows. */
export interface Progress {
  total: number;
  /** Succeeded. */
  done: number;
  /** Failed or rolled back. */
  failed: number;
  /** Downloading or installing. */
  active: number;
  /** Waiting or offered: not started. */
  pending: number;
  canceled: number;
}

export function progress(devices: number, c: Counts): Progress {
  const n = (s: DeviceState) => c[s] ?? 0;
  return {
    total: devices,
    done: n("succeeded"),
    failed: n("failed") + n("rolledBack"),
    active: n("downloading") + n("installing"),
    pending: n("waiting") + n("offered"),
    canceled: n("canceled"),
  };
}

/** What progress says in words, e.g. "1 of 4 done, 1 failed, 2 pending". */
export function progressText(p: Progress): string {
  const parts = [`${p.done} of ${p.total} done`];
  if (p.failed) parts.push(`${p.failed} failed`);
  if (p.active) parts.push(`${p.active} updating`);
  if (p.pending) parts.push(`${p.pending} pending`);
  if (p.canceled) parts.push(`${p.canceled} canceled`);
  return parts.join(", ");
}

export type RolloutAction = "pause" | "resume" | "cancel";

/** The actions ota accepts in a state (rollout.rs): pause a running one, resume a paused
 * one, cancel either; an ended rollout takes none. */
export function actionsFor(state: string): RolloutAction[] {
  if (state === "running") return ["pause", "cancel"];
  if (state === "paused") return ["resume", "cancel"];
  return [];
}

/** Whether a failed call on ota's list means ota is not there: the gateway has no such
 * service (404), or no instance answers (502, 503, 504). */
export function otaMissing(status: number): boolean {
  return status === 404 || status === 502 || status === 503 || status === 504;
}

/** A group as ota lists it: a label selector, and a profile when not empty. */
export interface GroupSelector {
  labels: string[];
  profile: string;
}

/** Whether a device is a member of a group (what ota works out: every label, and the
 * profile if the group names one), so the inventory can be filtered without asking again. */
export function inGroup(d: { labels: string[]; profileName: string }, g: GroupSelector): boolean {
  return g.labels.every((l) => d.labels.includes(l)) && (!g.profile || d.profileName === g.profile);
}

export type TargetKind = "devices" | "labels" | "group";

/** What the new-rollout form holds, as typed. */
export interface RolloutForm {
  name: string;
  artifact: { name: string; version: string };
  kind: TargetKind;
  devices: string[];
  /** Comma-separated. */
  labels: string;
  group: string;
  phases: string;
  failureCount: string;
  windowStart: string;
  windowEnd: string;
}

/** `POST /api/v3/rollout`: what the form asks for; the policy's other fields are ota's
 * defaults. */
export interface RolloutRequest {
  name: string;
  artifact: { name: string; version: string };
  target: { devices: string[] } | { labels: string[] } | { group: string };
  policy: { phases: number[]; failureCount: number; window?: { start: string; end: string } };
}

/** The request the form makes, or the first thing wrong with it (said for the person). */
export function rolloutRequest(f: RolloutForm): Result<RolloutRequest> {
  const fail = (error: string) => ({ ok: false as const, error });
  const name = f.name.trim();
  if (!validName(name)) return fail("A rollout name is 1 to 128 letters, digits, '-', '_' or '.'.");
  const phases = parsePhases(f.phases);
  if (!phases.ok) return fail(`Phases: ${phases.error}.`);
  const window = parseWindow(f.windowStart, f.windowEnd);
  if (!window.ok) return fail(`Window: ${window.error}.`);
  const failureCount = Number(f.failureCount.trim() || "x");
  if (!Number.isInteger(failureCount) || failureCount < 1) {
    return fail("Pause after: a whole number of failed devices, at least 1.");
  }
  const labels = f.labels
    .split(",")
    .map((l) => l.trim())
    .filter((l) => l);
  let target: RolloutRequest["target"];
  if (f.kind === "devices") {
    if (f.devices.length === 0) return fail("Choose at least one device.");
    target = { devices: f.devices };
  } else if (f.kind === "labels") {
    if (labels.length === 0) return fail("Give at least one label.");
    target = { labels };
  } else {
    if (!f.group) return fail("Choose a group.");
    target = { group: f.group };
  }
  const policy: RolloutRequest["policy"] = { phases: phases.value, failureCount };
  if (window.value) policy.window = window.value;
  return { ok: true, value: { name, artifact: f.artifact, target, policy } };
}
