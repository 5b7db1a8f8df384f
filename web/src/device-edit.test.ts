import { describe, expect, it } from "vitest";
import { intervalMs, parseLabels } from "./device-edit";
import { refusedItem } from "./api";

describe("labels", () => {
  it("split on commas and spaces, each once", () => {
    expect(parseLabels(" pump, hall-2  pump,,\troof ")).toEqual(["pump", "hall-2", "roof"]);
    expect(parseLabels("  ")).toEqual([]);
  });
});

describe("intervals", () => {
  it("read as EdgeX writes them", () => {
    expect(intervalMs("10s")).toEqual({ ok: true, ms: 10_000 });
    expect(intervalMs("1m30s")).toEqual({ ok: true, ms: 90_000 });
    expect(intervalMs("250ms")).toEqual({ ok: true, ms: 250 });
    expect(intervalMs("1.5h")).toEqual({ ok: true, ms: 5_400_000 });
  });

  it("refuse what core-metadata refuses, and floods", () => {
    for (const bad of ["", "10", "0s", "5 parsecs", "s", "1x", "1s 2s"]) {
      expect(intervalMs(bad).ok, bad).toBe(false);
    }
    // Spaces around it are trimmed, as on the node.
    expect(intervalMs(" 10s ").ok).toBe(true);
    expect(intervalMs("1ms").ok).toBe(false);
  });
});

describe("multi-status answers", () => {
  it("give the first refused item's message", () => {
    expect(refusedItem([{ statusCode: 200 }, { statusCode: 200 }])).toBeNull();
    const e = refusedItem([{ statusCode: 200 }, { statusCode: 404, message: "device x not found" }]);
    expect(e?.status).toBe(404);
    expect(e?.message).toBe("device x not found");
    expect(refusedItem({ statusCode: 500 })).toBeNull();
  });
});
