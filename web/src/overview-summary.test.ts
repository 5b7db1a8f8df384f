import { describe, expect, it } from "vitest";
import type { Destination } from "./dataflow";
import {
  capShare,
  exportSummary,
  newest,
  nodeEvent,
  percent,
  retentionText,
  severityClass,
  type Notification,
  type Retention,
} from "./overview-summary";

const retention: Retention = {
  enabled: true,
  intervalMs: 30000,
  maxCap: 50_000_000,
  minCap: 40_000_000,
  maxAgeSeconds: 0,
  storedEvents: 100,
  storedReadings: 25_000_000,
};

describe("retention", () => {
  it("says the bounds in words", () => {
    expect(retentionText(retention)).toBe("Above 50,000,000 readings the oldest go until 40,000,000 remain.");
    expect(retentionText({ ...retention, maxAgeSeconds: 7_776_000 })).toBe(
      "Above 50,000,000 readings the oldest go until 40,000,000 remain; readings older than 90 days go.",
    );
    expect(retentionText({ ...retention, maxCap: 0, maxAgeSeconds: 3600 })).toBe("Readings older than 1 h go.");
    expect(retentionText({ ...retention, maxCap: 0 })).toMatch(/sets no bound/);
    expect(retentionText({ ...retention, enabled: false })).toMatch(/^Retention is off/);
  });

  it("gives the share of the cap in use, none without a cap", () => {
    expect(capShare(retention)).toBe(0.5);
    expect(capShare({ ...retention, storedReadings: 60_000_000 })).toBe(1);
    expect(capShare({ ...retention, maxCap: 0 })).toBeNull();
    expect(capShare({ ...retention, enabled: false })).toBeNull();
  });

  it("gives percentages for people", () => {
    expect(percent(0.5)).toBe("50 %");
    expect(percent(0.0123)).toBe("1.2 %");
    expect(percent(0.00001)).toBe("< 0.1 %");
    expect(percent(0)).toBe("0 %");
  });
});

describe("exportSummary", () => {
  const dest = (name: string, items: number, failures: number, connected: boolean): Destination => ({
    name,
    kind: "webhook",
    url: "http://x",
    queue: {
      items,
      bytes: 0,
      maxBytes: 1,
      oldestAgeMs: null,
      priorities: [],
      droppedOverflow: 0,
      expired: 0,
      refused: 0,
      diskFull: 0,
    },
    sender: {
      connected,
      consecutiveFailures: failures,
      sentItems: 0,
      sentBatches: 0,
      wireBytes: 0,
      deadLettered: 0,
      transientFailures: failures,
      permanentFailures: 0,
      tooLarge: 0,
    },
  });

  it("adds up the queues and names the destinations that are not up", () => {
    const s = exportSummary([dest("historian", 40, 3, false), dest("cloud", 2, 0, true), dest("new", 0, 0, false)]);
    expect(s).toEqual({ items: 42, notUp: ["historian"] });
  });
});

describe("notifications", () => {
  const n = (id: string, created: number): Notification => ({
    id,
    content: id,
    sender: "rules",
    severity: "NORMAL",
    acknowledged: false,
    created,
  });

  it("keeps the newest, newest first", () => {
    const list = [n("a", 1), n("c", 3), n("b", 2), n("d", 4)];
    expect(newest(list, 2).map((x) => x.id)).toEqual(["d", "c"]);
  });

  it("makes critical ones stand out", () => {
    expect(severityClass("CRITICAL")).toBe("status down");
    expect(severityClass("NORMAL")).toBe("");
  });
});

describe("node events", () => {
  it("say what a system event did, to what, by whom", () => {
    const e = nodeEvent(
      "system",
      JSON.stringify({
        type: "device",
        action: "add",
        source: "core-metadata",
        owner: "device-virtual",
        details: { name: "pump-7" },
        timestamp: 1_700_000_000_000_000_000,
      }),
    );
    expect(e).toEqual({ at: 1_700_000_000_000, kind: "system", what: "device pump-7 added by core-metadata" });
  });

  it("say what an alert saw, with its severity", () => {
    const e = nodeEvent(
      "alert",
      JSON.stringify({
        pipeline: "tank-1m",
        deviceName: "tank-1",
        resourceName: "level",
        value: "85",
        condition: "value > 80",
        severity: "critical",
        origin: 2_000_000_000,
        message: "tank too full",
      }),
    );
    expect(e).toEqual({
      at: 2000,
      kind: "alert",
      severity: "critical",
      what: "tank too full: tank-1 level 85 (value > 80, pipeline tank-1m)",
    });
  });

  it("skip what is not one", () => {
    expect(nodeEvent("lagged", "3")).toBeNull();
    expect(nodeEvent("system", "{not json")).toBeNull();
  });
});
