import { describe, expect, it } from "vitest";
import { checkValue, numeric } from "./values";

describe("checkValue", () => {
  it("takes values of the resource's type within its bounds", () => {
    expect(checkValue({ valueType: "Int16", minimum: "-10", maximum: "10" }, " 7 ")).toEqual({ ok: true, value: "7" });
    expect(checkValue({ valueType: "Float64", maximum: 100 }, "99.5")).toEqual({ ok: true, value: "99.5" });
    expect(checkValue({ valueType: "Bool" }, "true")).toEqual({ ok: true, value: "true" });
    expect(checkValue({ valueType: "String" }, " as typed ")).toEqual({ ok: true, value: " as typed " });
  });

  it("refuses what the type cannot hold", () => {
    expect(checkValue({ valueType: "Uint8" }, "256")).toEqual({ ok: false, error: "Uint8 holds 0 to 255" });
    expect(checkValue({ valueType: "Uint8" }, "-1").ok).toBe(false);
    expect(checkValue({ valueType: "Int64" }, "9223372036854775808").ok).toBe(false);
    expect(checkValue({ valueType: "Int64" }, "9223372036854775807").ok).toBe(true);
    expect(checkValue({ valueType: "Int32" }, "1.5")).toEqual({ ok: false, error: "a whole number (Int32)" });
    expect(checkValue({ valueType: "Float32" }, "1e39").ok).toBe(false);
    expect(checkValue({ valueType: "Float64" }, "NaN").ok).toBe(false);
    expect(checkValue({ valueType: "Float64" }, "").ok).toBe(false);
    expect(checkValue({ valueType: "Bool" }, "yes")).toEqual({ ok: false, error: "true or false" });
    expect(checkValue({ valueType: "Binary" }, "x").ok).toBe(false);
  });

  it("refuses what the profile's minimum and maximum exclude", () => {
    const p = { valueType: "Float32", minimum: "0", maximum: "50" };
    expect(checkValue(p, "-0.1")).toEqual({ ok: false, error: "at least 0" });
    expect(checkValue(p, "50.01")).toEqual({ ok: false, error: "at most 50" });
    expect(checkValue(p, "50").ok).toBe(true);
    // Bounds that are not numbers bound nothing.
    expect(checkValue({ valueType: "Int8", minimum: "", maximum: "x" }, "100").ok).toBe(true);
  });
});

describe("numeric", () => {
  it("charts numbers and booleans, nothing else", () => {
    expect(numeric("Float64", "21.5")).toBe(21.5);
    expect(numeric("Int8", "-3")).toBe(-3);
    expect(numeric("Bool", "true")).toBe(1);
    expect(numeric("String", "5")).toBeNull();
    expect(numeric("Float32", "NaN")).toBeNull();
  });
});
