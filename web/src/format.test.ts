import { describe, expect, it } from "vitest";
import { bytes, count, duration } from "./format";

describe("bytes", () => {
  it("are given in binary units, one decimal under ten", () => {
    expect(bytes(0)).toBe("0 B");
    expect(bytes(1023)).toBe("1023 B");
    expect(bytes(1024)).toBe("1 KiB");
    expect(bytes(1536)).toBe("1.5 KiB");
    expect(bytes(65536)).toBe("64 KiB");
    expect(bytes(268435456)).toBe("256 MiB");
    expect(bytes(3 * 1024 ** 3)).toBe("3 GiB");
  });
});

describe("duration", () => {
  it("is given in the unit that reads best", () => {
    expect(duration(250)).toBe("250 ms");
    expect(duration(5000)).toBe("5 s");
    expect(duration(90_000)).toBe("1.5 min");
    expect(duration(7_200_000)).toBe("2 h");
    expect(duration(86_400_000)).toBe("1 day");
    expect(duration(7_776_000_000)).toBe("90 days");
  });
});

describe("count", () => {
  it("puts one thing in the singular and any other number in the plural", () => {
    expect(count(1, "artifact")).toBe("1 artifact");
    expect(count(0, "artifact")).toBe("0 artifacts");
    expect(count(3, "dead letter")).toBe("3 dead letters");
  });
});
