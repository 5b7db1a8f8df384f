import { describe, expect, it } from "vitest";
import { ApiError } from "./api";
import {
  Rates,
  describeAlert,
  describeFilter,
  describeItem,
  ifEnabled,
  loadExport,
  describeStep,
  link,
  linkClass,
  notEnabled,
  perSecond,
  rate,
  type SendState,
} from "./dataflow";

describe("rate", () => {
  it("is the counter's growth per second between two polls", () => {
    expect(rate({ at: 1000, value: 10 }, { at: 3000, value: 30 })).toBe(10);
    expect(rate({ at: 0, value: 5 }, { at: 4000, value: 5 })).toBe(0);
  });

  it("is unknown without an earlier poll, with no time between, or after a reset", () => {
    expect(rate(undefined, { at: 1000, value: 10 })).toBeNull();
    expect(rate({ at: 1000, value: 10 }, { at: 1000, value: 20 })).toBeNull();
    expect(rate({ at: 1000, value: 50 }, { at: 2000, value: 3 })).toBeNull();
  });
});

describe("Rates", () => {
  it("keeps each counter's last poll and gives its rate at the next", () => {
    const r = new Rates();
    expect(r.see("a", 0, 100)).toBeNull();
    expect(r.see("b", 0, 7)).toBeNull();
    expect(r.see("a", 2000, 110)).toBe(5);
    expect(r.see("a", 4000, 130)).toBe(10);
    expect(r.see("b", 4000, 7)).toBe(0);
  });

  it("starts over after a counter went down", () => {
    const r = new Rates();
    r.see("a", 0, 100);
    expect(r.see("a", 1000, 4)).toBeNull();
    expect(r.see("a", 2000, 6)).toBe(2);
  });
});

describe("formatting", () => {
  it("says a rate is being measured until it is known", () => {
    expect(perSecond(null)).toBe("measuring…");
    expect(perSecond(0, "readings")).toBe("0 readings/s");
    expect(perSecond(0.25)).toBe("0.3/s");
    expect(perSecond(1234.4, "items")).toBe("1,234 items/s");
  });
});

describe("notEnabled", () => {
  it("is the gateway's answer for a service it does not have", () => {
    expect(notEnabled(new ApiError(404, "no service 'rules' behind this gateway"))).toBe(true);
  });

  it("is not a service that is down, or a missing item", () => {
    expect(notEnabled(new ApiError(503, "no instance of rules is available"))).toBe(false);
    expect(notEnabled(new ApiError(404, "no pipeline x"))).toBe(false);
    expect(notEnabled(new Error("no service 'rules' behind this gateway"))).toBe(false);
  });
});

describe("link", () => {
  const base: SendState = {
    connected: false,
    consecutiveFailures: 0,
    sentItems: 0,
    sentBatches: 0,
    wireBytes: 0,
    deadLettered: 0,
  };

  it("is idle before anything was sent", () => {
    expect(link(base).state).toBe("idle");
  });

  it("is down while sends fail in a row, whatever came before", () => {
    const l = link({ ...base, connected: false, consecutiveFailures: 3, lastError: "refused", lastErrorMs: 9 });
    expect(l).toEqual({ state: "down", label: "Down: 3 failed attempts in a row" });
    expect(link({ ...base, consecutiveFailures: 1 }).label).toBe("Down: 1 failed attempt in a row");
  });

  it("is up after a send went through, refusing when items were refused since", () => {
    expect(link({ ...base, connected: true, lastSuccessMs: 20, lastErrorMs: 10 }).state).toBe("up");
    expect(link({ ...base, connected: true, lastSuccessMs: 20, lastErrorMs: 30 }).state).toBe("refusing");
    expect(link({ ...base, lastErrorMs: 30, lastError: "400" }).state).toBe("refusing");
  });

  it("is shown green when up, plain when idle, red when down or refusing", () => {
    expect(linkClass("up")).toBe("status up");
    expect(linkClass("idle")).toBe("status");
    expect(linkClass("down")).toBe("status down");
    expect(linkClass("refusing")).toBe("status down");
  });
});

describe("pipelines in words", () => {
  it("describes each step", () => {
    expect(describeStep({ type: "tumbling", size_ms: 5000, functions: ["min", "max", "count"] })).toBe(
      "5 s windows: min, max, count",
    );
    expect(describeStep({ type: "sliding", size_ms: 300_000, every_ms: 60_000, functions: ["mean"] })).toBe(
      "last 5 min every 1 min: mean",
    );
    expect(describeStep({ type: "deadband", delta: 0.5 })).toBe("changes of at least 0.5");
    expect(describeStep({ type: "downsample", every_ms: 5000 })).toBe("at most one per 5 s");
    expect(describeStep({ type: "range", min: 0, max: 100 })).toBe("values from 0 to 100");
    expect(describeStep({ type: "range", max: 100 })).toBe("values up to 100");
  });

  it("describes alerts and filters", () => {
    expect(describeAlert({ above: 200, severity: "warning", message: "Int8 out of its range" })).toBe(
      "above 200 (warning): Int8 out of its range",
    );
    expect(describeAlert({ below: 0, rate_above: 5, severity: "critical" })).toBe(
      "below 0 or changing faster than 5/s (critical)",
    );
    expect(describeFilter(["console-*"], "device")).toBe("console-*");
    expect(describeFilter([], "device")).toBe("every device");
  });
});

describe("describeItem", () => {
  it("names an event's device and source, an alert's pipeline and device", () => {
    const event = { kind: "event", event: { deviceName: "d1", sourceName: "Int8", readings: [{}, {}] } };
    expect(describeItem(event)).toBe("event of d1/Int8, 2 readings");
    expect(describeItem({ kind: "alert", alert: { pipeline: "p", deviceName: "d1" } })).toBe("alert of p on d1");
  });

  it("shows anything else as text, cut short", () => {
    expect(describeItem("raw bytes")).toBe("raw bytes");
    expect(describeItem({ x: "y".repeat(100) })).toHaveLength(80);
  });
});

describe("ifEnabled", () => {
  it("passes the answer on, says when the service is not on the node, and lets other errors through", async () => {
    expect(await ifEnabled(async () => 7)).toEqual({ enabled: true, value: 7 });
    const off = new ApiError(404, "no service 'export' behind this gateway");
    expect(await ifEnabled(() => Promise.reject(off))).toEqual({ enabled: false });
    const down = new ApiError(503, "no instance of export is available");
    await expect(ifEnabled(() => Promise.reject(down))).rejects.toBe(down);
  });
});

describe("loadExport", () => {
  it("gives each destination's send rate from the previous poll", async () => {
    let sent = 100;
    const session = {
      call: async <T>(path: string) => {
        expect(path).toBe("/export/api/v3/export/status");
        return { destinations: [{ name: "h", sender: { sentItems: sent, wireBytes: sent * 10 } }] } as T;
      },
    };
    const rates = new Rates();
    const first = await loadExport(session, rates);
    expect(first.enabled && first.value[0].rates).toEqual({ items: null, bytes: null });
    sent = 400;
    await new Promise((ok) => setTimeout(ok, 20));
    const second = await loadExport(session, rates);
    if (!second.enabled) throw new Error("enabled");
    expect(second.value[0].rates.items).toBeGreaterThan(0);
    expect(second.value[0].rates.bytes).toBeCloseTo((second.value[0].rates.items ?? 0) * 10);
  });
});
