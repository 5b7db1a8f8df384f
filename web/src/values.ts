// Values as EdgeX types them: what a write command may send for a resource, checked
// before it is sent (the API refuses it too), and readings as numbers for charts.

export interface ResourceProperties {
  valueType: string;
  readWrite?: string;
  minimum?: string | number;
  maximum?: string | number;
  units?: string;
}

export type Checked = { ok: true; value: string } | { ok: false; error: string };

const INT_RANGES: Record<string, [bigint, bigint]> = {
  Int8: [-128n, 127n],
  Int16: [-32768n, 32767n],
  Int32: [-2147483648n, 2147483647n],
  Int64: [-9223372036854775808n, 9223372036854775807n],
  Uint8: [0n, 255n],
  Uint16: [0n, 65535n],
  Uint32: [0n, 4294967295n],
  Uint64: [0n, 18446744073709551615n],
};

function bound(v: string | number | undefined): number | null {
  if (v === undefined || v === "") return null;
  const n = typeof v === "number" ? v : Number(v);
  return Number.isFinite(n) ? n : null;
}

/** Whether `input` may be written to a resource with properties `p`: its type, then the
 * profile's minimum and maximum. The value to send, or why not. */
export function checkValue(p: ResourceProperties, input: string): Checked {
  const s = input.trim();
  const t = p.valueType;
  if (t === "Bool") {
    if (s === "true" || s === "false") return { ok: true, value: s };
    return { ok: false, error: "true or false" };
  }
  if (t === "String") return { ok: true, value: input };
  let n: number;
  if (t in INT_RANGES) {
    if (!/^[+-]?\d+$/.test(s)) return { ok: false, error: `a whole number (${t})` };
    const [lo, hi] = INT_RANGES[t];
    const big = BigInt(s);
    if (big < lo || big > hi) return { ok: false, error: `${t} holds ${lo} to ${hi}` };
    n = Number(s);
  } else if (t === "Float32" || t === "Float64") {
    n = Number(s);
    if (s === "" || !Number.isFinite(n)) return { ok: false, error: `a number (${t})` };
    if (t === "Float32" && Math.abs(n) > 3.4028235e38) {
      return { ok: false, error: "Float32 holds up to ±3.4028235e38" };
    }
  } else {
    return { ok: false, error: `${t} values cannot be written from the console` };
  }
  const min = bound(p.minimum);
  const max = bound(p.maximum);
  if (min !== null && n < min) return { ok: false, error: `at least ${min}` };
  if (max !== null && n > max) return { ok: false, error: `at most ${max}` };
  return { ok: true, value: s };
}

/** A reading's value as a number for a chart, if it is one. */
export function numeric(valueType: string, value: string): number | null {
  if (valueType === "Bool") return value === "true" ? 1 : value === "false" ? 0 : null;
  if (!(valueType in INT_RANGES) && valueType !== "Float32" && valueType !== "Float64") return null;
  const n = Number(value);
  return Number.isFinite(n) ? n : null;
}
