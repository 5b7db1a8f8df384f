// What the gateway asks of users, passwords and API keys (services/outpost-gateway/src/
// users.rs), checked in the page before sending so a typo is pointed out in place; the
// gateway checks again and its message is shown when it refuses.

import type { Role } from "./api";

/** The roles, least first, each in one line. */
export const ROLES: { role: Role; what: string }[] = [
  { role: "viewer", what: "reads everything: devices, readings, profiles, rules, firmware; changes nothing" },
  {
    role: "operator",
    what: "also changes things: sends commands, edits devices, profiles, rules and exports, rolls out firmware",
  },
  { role: "admin", what: "everything, also users, API keys, secrets, scheduled jobs and the service registry" },
];

/** The gateway's bounds on a password: 12 characters at least, 1024 bytes at most. */
export const PASSWORD_MIN = 12;
export const PASSWORD_MAX_BYTES = 1024;

/** Why `name` cannot be a user name, or null when it can: 1 to 64 letters, digits, `.`,
 * `-`, `_` or `@` (ASCII). */
export function userNameProblem(name: string): string | null {
  if (name.length === 0) return "enter a user name";
  if (name.length > 64) return "a user name has at most 64 characters";
  const bad = [...name].find((c) => !/^[A-Za-z0-9._@-]$/.test(c));
  if (bad !== undefined) return `a user name may only hold letters, digits, '.', '-', '_' and '@', not '${bad}'`;
  return null;
}

/** Why a new password (typed twice) is refused, or null when it will do. Characters are
 * counted as the gateway counts them (Unicode scalar values, not UTF-16 units). */
export function passwordProblem(password: string, repeated: string): string | null {
  const chars = [...password].length;
  if (chars < PASSWORD_MIN) return `a password needs at least ${PASSWORD_MIN} characters (this one has ${chars})`;
  if (new TextEncoder().encode(password).length > PASSWORD_MAX_BYTES) return "a password is at most 1024 bytes long";
  if (password !== repeated) return "the two passwords differ";
  return null;
}

/** Why `name` cannot name an API key, or null: 1 to 128 bytes, no control characters. */
export function keyNameProblem(name: string): string | null {
  if (name.trim().length === 0) return "enter a name for the key";
  if (new TextEncoder().encode(name).length > 128) return "a key name is at most 128 bytes long";
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(name)) return "a key name cannot hold control characters";
  return null;
}

/** An API key as the gateway lists it; times in seconds since the epoch. */
export interface ApiKey {
  id: string;
  name: string;
  role: Role;
  owner: string;
  created: number;
  revoked?: number;
}

/** Keys in use first (newest first), then the revoked ones (most recently revoked first). */
export function sortKeys(keys: ApiKey[]): ApiKey[] {
  return [...keys].sort((a, b) => {
    if ((a.revoked === undefined) !== (b.revoked === undefined)) return a.revoked === undefined ? -1 : 1;
    return (b.revoked ?? b.created) - (a.revoked ?? a.created) || a.id.localeCompare(b.id);
  });
}
