import { describe, expect, it } from "vitest";
import { SseParser } from "./sse";

describe("SseParser", () => {
  it("yields whole events from chunks cut anywhere", () => {
    const p = new SseParser();
    const text = 'event: reading\ndata: {"a":1}\n\n: keep-alive\n\nid: 7\ndata: x\ndata: y\r\n\r\n';
    const got = [];
    for (const ch of text) got.push(...p.feed(ch));
    expect(got).toEqual([
      { event: "reading", data: '{"a":1}', id: undefined },
      { event: "message", data: "x\ny", id: "7" },
    ]);
  });

  it("yields nothing for a comment or an unfinished event", () => {
    const p = new SseParser();
    expect(p.feed(": hello\n\ndata: half")).toEqual([]);
    expect(p.feed("\n\n")).toEqual([{ event: "message", data: "half", id: undefined }]);
  });
});
