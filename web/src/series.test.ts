import { describe, expect, it } from "vitest";
import { Series } from "./series";

describe("Series", () => {
  it("keeps the newest points up to its capacity, in order", () => {
    const s = new Series(3);
    for (let i = 1; i <= 5; i++) s.push(i, i * 10);
    expect(s.length).toBe(3);
    expect(s.toArrays()).toEqual([
      [3, 4, 5],
      [30, 40, 50],
    ]);
  });

  it("puts a late point in its place and drops old ones", () => {
    const s = new Series(4);
    s.push(10, 1);
    s.push(30, 3);
    s.push(20, 2);
    expect(s.toArrays()[0]).toEqual([10, 20, 30]);
    s.push(40, 4);
    s.push(15, 9);
    expect(s.toArrays()[0]).toEqual([15, 20, 30, 40]);
    s.dropBefore(25);
    expect(s.toArrays()).toEqual([
      [30, 40],
      [3, 4],
    ]);
  });

  it("holds the same memory however long it runs", () => {
    const s = new Series(1000);
    for (let i = 0; i < 100_000; i++) s.push(i, i);
    expect(s.length).toBe(1000);
    expect(s.toArrays()[0][0]).toBe(99_000);
  });
});
