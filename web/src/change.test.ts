import { describe, expect, it } from "vitest";
import { ApiError, SessionEnded } from "./api";
import { failure } from "./change";

describe("failure", () => {
  it("gives the node's own message for a refused call", () => {
    expect(failure(new ApiError(409, "the last admin cannot be removed"))).toBe("the last admin cannot be removed");
    expect(failure(new TypeError("Failed to fetch"))).toBe("TypeError: Failed to fetch");
  });

  it("says a change was not made when the session had ended, to be tried again", () => {
    expect(failure(new SessionEnded("the session expired"))).toMatch(/^not done, the session had ended/);
  });
});
