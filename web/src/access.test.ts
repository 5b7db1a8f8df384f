import { describe, expect, it } from "vitest";
import { ROLES, keyNameProblem, passwordProblem, sortKeys, userNameProblem, type ApiKey } from "./access";

describe("userNameProblem", () => {
  it("takes what the gateway takes", () => {
    for (const n of ["op", "op-desktop", "a.b_c@site", "x".repeat(64)]) expect(userNameProblem(n)).toBeNull();
  });
  it("says what is wrong with the rest", () => {
    expect(userNameProblem("")).toBe("enter a user name");
    expect(userNameProblem("x".repeat(65))).toMatch(/at most 64/);
    expect(userNameProblem("an op")).toMatch(/not ' '$/);
    expect(userNameProblem("josé")).toMatch(/not 'é'$/);
    expect(userNameProblem("a/b")).toMatch(/not '\/'$/);
  });
});

describe("passwordProblem", () => {
  it("needs 12 characters, counted as the gateway counts them", () => {
    expect(passwordProblem("short pw 11", "short pw 11")).toBe(
      "a password needs at least 12 characters (this one has 11)",
    );
    expect(passwordProblem("twelve chars", "twelve chars")).toBeNull();
    // Eleven emoji are 22 UTF-16 units but 11 characters.
    const emoji = "😀".repeat(11);
    expect(passwordProblem(emoji, emoji)).toMatch(/has 11/);
  });
  it("refuses more than 1024 bytes", () => {
    const long = "é".repeat(513);
    expect(passwordProblem(long, long)).toMatch(/1024 bytes/);
    const max = "a".repeat(1024);
    expect(passwordProblem(max, max)).toBeNull();
  });
  it("needs the same password twice", () => {
    expect(passwordProblem("operator password 1", "operator password 2")).toBe("the two passwords differ");
  });
});

describe("keyNameProblem", () => {
  it("needs a printable name of at most 128 bytes", () => {
    expect(keyNameProblem("historian export")).toBeNull();
    expect(keyNameProblem("  ")).toBe("enter a name for the key");
    expect(keyNameProblem("a\tb")).toMatch(/control/);
    expect(keyNameProblem("x".repeat(129))).toMatch(/128 bytes/);
    expect(keyNameProblem("x".repeat(128))).toBeNull();
  });
});

describe("sortKeys", () => {
  it("lists keys in use newest first, then revoked ones", () => {
    const k = (id: string, created: number, revoked?: number): ApiKey => ({
      id,
      name: id,
      role: "viewer",
      owner: "admin",
      created,
      revoked,
    });
    const sorted = sortKeys([k("a", 1, 5), k("b", 2), k("c", 3), k("d", 4, 9)]).map((x) => x.id);
    expect(sorted).toEqual(["c", "b", "d", "a"]);
  });
});

describe("ROLES", () => {
  it("explains each role, least first", () => {
    expect(ROLES.map((r) => r.role)).toEqual(["viewer", "operator", "admin"]);
    for (const r of ROLES) expect(r.what.length).toBeGreaterThan(20);
  });
});
