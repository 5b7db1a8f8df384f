import { describe, expect, it } from "vitest";
import { href, parse, section, type Route } from "./route";

describe("routes", () => {
  it("come back from their links unchanged", () => {
    const routes: Route[] = [
      { page: "overview" },
      { page: "devices" },
      { page: "device", name: "pump 7/å#?" },
      { page: "follow", names: ["a,b", "c d"] },
      { page: "profiles" },
      { page: "data" },
      { page: "firmware" },
      { page: "access" },
    ];
    for (const r of routes) {
      expect(parse(href(r))).toEqual(r);
    }
  });

  it("send anything unknown to the overview", () => {
    expect(parse("")).toEqual({ page: "overview" });
    expect(parse("#/nowhere")).toEqual({ page: "overview" });
    expect(parse("#/device/")).toEqual({ page: "overview" });
  });

  it("put a device's pages under Devices", () => {
    expect(section({ page: "device", name: "d" })).toBe("devices");
    expect(section({ page: "follow", names: ["d"] })).toBe("devices");
    expect(section({ page: "firmware" })).toBe("firmware");
  });
});
