import { describe, expect, it } from "vitest";
import {
  actionsFor,
  fileMismatch,
  inGroup,
  hex,
  otaMissing,
  parsePhases,
  parseSignatureFile,
  parseWindow,
  progress,
  progressText,
  rolloutRequest,
  validName,
  type RolloutForm,
} from "./firmware";

const SHA = "a".repeat(64);
const manifest = {
  compatible: ["Random-Integer-Device"],
  name: "pump-fw",
  payloadType: "file",
  sha256: SHA,
  size: 65536,
  version: "2.1",
};
const b64 = (s: string) => btoa(String.fromCharCode(...new TextEncoder().encode(s)));
const sigFile = (m: unknown, signature = "c2ln") =>
  JSON.stringify({ manifest: b64(JSON.stringify(m)), signature }, null, 2);

describe("parseSignatureFile", () => {
  it("decodes the manifest and keeps its base64 as it is", () => {
    const text = sigFile(manifest);
    const r = parseSignatureFile(text);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.value.manifest).toEqual(manifest);
    expect(r.value.manifestBase64).toBe(JSON.parse(text).manifest);
    expect(r.value.signature).toBe("c2ln");
  });

  it("reads a manifest with text beyond ASCII", () => {
    const r = parseSignatureFile(sigFile({ ...manifest, payloadType: "fichier-é" }));
    expect(r.ok && r.value.manifest.payloadType).toBe("fichier-é");
  });

  it("lower-cases the SHA-256, as ota does", () => {
    const r = parseSignatureFile(sigFile({ ...manifest, sha256: "AB".repeat(32) }));
    expect(r.ok && r.value.manifest.sha256).toBe("ab".repeat(32));
  });

  it("refuses what is not a signature file", () => {
    // The firmware itself chosen as the signature, or another JSON file.
    expect(parseSignatureFile("\u0000\u0001binary").ok).toBe(false);
    expect(parseSignatureFile('{"name": "x"}').ok).toBe(false);
    expect(parseSignatureFile(JSON.stringify({ manifest: "%%%", signature: "x" }))).toEqual({
      ok: false,
      error: "the signature file's manifest is not base64 of JSON",
    });
    expect(parseSignatureFile(sigFile(manifest, "")).ok).toBe(false);
    const { sha256: _, ...noSha } = manifest;
    expect(parseSignatureFile(sigFile(noSha)).ok).toBe(false);
    expect(parseSignatureFile(sigFile({ ...manifest, size: -1 })).ok).toBe(false);
    expect(parseSignatureFile(sigFile({ ...manifest, sha256: "abc" })).ok).toBe(false);
  });
});

describe("fileMismatch", () => {
  it("passes the file the manifest was signed for", () => {
    expect(fileMismatch(manifest, "pump.bin", 65536, SHA)).toBeNull();
    expect(fileMismatch(manifest, "pump.bin", 65536, SHA.toUpperCase())).toBeNull();
    // No hash in this browser: the size alone.
    expect(fileMismatch(manifest, "pump.bin", 65536, null)).toBeNull();
  });

  it("says why another file is refused", () => {
    expect(fileMismatch(manifest, "pump.bin.sig.json", 300, "b".repeat(64))).toBe(
      "pump.bin.sig.json is not the file signed as pump-fw 2.1: it has 300 B (300 bytes), the signature is for 64 KiB (65536 bytes). Choose the firmware file the signature file was made for.",
    );
    expect(fileMismatch(manifest, "other.bin", 65536, "b".repeat(64))).toMatch(/SHA-256 differs/);
  });

  it("compares with the hex of what crypto.subtle computes", async () => {
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode("abc"));
    expect(hex(digest)).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    expect(hex(new Uint8Array([0, 15, 255]))).toBe("000fff");
  });
});

describe("policy fields", () => {
  it("takes increasing phases ending at 100", () => {
    expect(parsePhases("1, 10, 100")).toEqual({ ok: true, value: [1, 10, 100] });
    expect(parsePhases("25% 100%")).toEqual({ ok: true, value: [25, 100] });
    expect(parsePhases("100")).toEqual({ ok: true, value: [100] });
    for (const bad of ["", "10, 50", "50, 10, 100", "0, 100", "10, 10, 100", "x, 100", "100, 150"]) {
      expect(parsePhases(bad).ok, bad).toBe(false);
    }
  });

  it("takes a window as both ends or none", () => {
    expect(parseWindow("", "")).toEqual({ ok: true, value: null });
    expect(parseWindow("22:00", "04:30")).toEqual({ ok: true, value: { start: "22:00", end: "04:30" } });
    expect(parseWindow("22:00", "").ok).toBe(false);
    expect(parseWindow("24:00", "01:00").ok).toBe(false);
    expect(parseWindow("9:00", "10:00").ok).toBe(false);
    expect(parseWindow("10:00", "10:00")).toEqual({ ok: false, error: "a window's start and end differ" });
  });

  it("names rollouts as ota takes them", () => {
    expect(validName("pump-fw_2.1")).toBe(true);
    expect(validName("")).toBe(false);
    expect(validName("a b")).toBe(false);
    expect(validName("x".repeat(129))).toBe(false);
  });
});

describe("rollouts", () => {
  it("groups device states into done, failed, updating, pending and canceled", () => {
    const p = progress(8, {
      waiting: 2,
      offered: 1,
      downloading: 1,
      installing: 0,
      succeeded: 1,
      failed: 1,
      rolledBack: 1,
      canceled: 1,
    });
    expect(p).toEqual({ total: 8, done: 1, failed: 2, active: 1, pending: 3, canceled: 1 });
    expect(progressText(p)).toBe("1 of 8 done, 2 failed, 1 updating, 3 pending, 1 canceled");
    expect(progressText(progress(1, { offered: 1 }))).toBe("0 of 1 done, 1 pending");
  });

  it("offers only the actions the state allows", () => {
    expect(actionsFor("running")).toEqual(["pause", "cancel"]);
    expect(actionsFor("paused")).toEqual(["resume", "cancel"]);
    for (const s of ["finished", "failed", "canceled"]) expect(actionsFor(s)).toEqual([]);
  });

  it("tells a node without ota from other failures", () => {
    for (const s of [404, 502, 503, 504]) expect(otaMissing(s)).toBe(true);
    for (const s of [0, 401, 403, 500]) expect(otaMissing(s)).toBe(false);
  });
});

describe("inGroup", () => {
  it("takes devices with every label of the group, of its profile if it names one", () => {
    const d = { labels: ["site-a", "pumps"], profileName: "Pump" };
    expect(inGroup(d, { labels: ["site-a"], profile: "" })).toBe(true);
    expect(inGroup(d, { labels: ["site-a", "pumps"], profile: "Pump" })).toBe(true);
    expect(inGroup(d, { labels: ["site-a", "valves"], profile: "" })).toBe(false);
    expect(inGroup(d, { labels: [], profile: "Valve" })).toBe(false);
  });
});

describe("rolloutRequest", () => {
  const form: RolloutForm = {
    name: " pump-wave ",
    artifact: { name: "pump-fw", version: "2.1" },
    kind: "devices",
    devices: ["console-1"],
    labels: "",
    group: "",
    phases: "1, 10, 100",
    failureCount: "3",
    windowStart: "",
    windowEnd: "",
  };

  it("makes ota's request from the form", () => {
    expect(rolloutRequest(form)).toEqual({
      ok: true,
      value: {
        name: "pump-wave",
        artifact: { name: "pump-fw", version: "2.1" },
        target: { devices: ["console-1"] },
        policy: { phases: [1, 10, 100], failureCount: 3 },
      },
    });
    const r = rolloutRequest({ ...form, kind: "labels", labels: "site-a, pumps,", windowStart: "22:00", windowEnd: "04:00" });
    expect(r.ok && r.value.target).toEqual({ labels: ["site-a", "pumps"] });
    expect(r.ok && r.value.policy.window).toEqual({ start: "22:00", end: "04:00" });
    const g = rolloutRequest({ ...form, kind: "group", group: "site-a" });
    expect(g.ok && g.value.target).toEqual({ group: "site-a" });
  });

  it("says what is missing or wrong", () => {
    const error = (f: Partial<RolloutForm>) => {
      const r = rolloutRequest({ ...form, ...f });
      return r.ok ? null : r.error;
    };
    expect(error({ name: "a b" })).toMatch(/rollout name/);
    expect(error({ phases: "10, 50" })).toMatch(/^Phases:/);
    expect(error({ windowStart: "22:00" })).toMatch(/^Window:/);
    expect(error({ failureCount: "0" })).toMatch(/^Pause after/);
    expect(error({ failureCount: "" })).toMatch(/^Pause after/);
    expect(error({ failureCount: "1.5" })).toMatch(/^Pause after/);
    expect(error({ devices: [] })).toBe("Choose at least one device.");
    expect(error({ kind: "labels", labels: " , " })).toBe("Give at least one label.");
    expect(error({ kind: "group" })).toBe("Choose a group.");
  });
});
