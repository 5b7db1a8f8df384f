// The access page, for administrators: the roles explained, users (added, their password
// changed, removed) and API keys (made and shown once, revoked).
import { Fragment } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import type { Role } from "../api";
import {
  PASSWORD_MIN,
  ROLES,
  keyNameProblem,
  passwordProblem,
  sortKeys,
  userNameProblem,
  type ApiKey,
} from "../access";
import { session } from "../app";
import { Confirm, ShownOnce, useChange } from "../change";
import { Problem, age, useLoad } from "../load";
import "./access.css";

const auth = "/api/v3/auth";

interface User {
  username: string;
  role: Role;
  /** Seconds since the epoch. */
  created: number;
}

/** How long ago a time in seconds since the epoch (as the gateway gives them) was. */
const ago = (seconds: number) => `${age(seconds * 1000)} ago`;

/** Users and API keys, for administrators (the gateway refuses these calls to anyone else). */
export function Access() {
  if (session.user?.role !== "admin") {
    return (
      <section aria-labelledby="access-h">
        <h1 id="access-h">Access</h1>
        <p class="notice">
          This page is for administrators: users, their roles and API keys are managed by an admin.
        </p>
      </section>
    );
  }
  return (
    <section aria-labelledby="access-h">
      <h1 id="access-h">Access</h1>
      <h2 id="roles-h">Roles</h2>
      <dl class="facts roles">
        {ROLES.map((r) => (
          <Fragment key={r.role}>
            <dt>{r.role}</dt>
            <dd>{r.what}</dd>
          </Fragment>
        ))}
      </dl>
      <Users />
      <Keys />
    </section>
  );
}

/** A role to give, least first. */
function RoleSelect({ id, value, onChange }: { id: string; value: Role; onChange: (r: Role) => void }) {
  return (
    <select id={id} value={value} onChange={(e) => onChange(e.currentTarget.value as Role)}>
      {ROLES.map((r) => (
        <option key={r.role} value={r.role}>
          {r.role}
        </option>
      ))}
    </select>
  );
}

/** The users with their roles; each one's password changed or removed here. */
function Users() {
  const users = useLoad(() => session.call<{ users: User[] }>(`${auth}/user`), [], 30000);
  const [changing, setChanging] = useState<string | null>(null);
  /** The "Change password" buttons, to go back to when the form is closed. */
  const toggles = useRef(new Map<string, HTMLButtonElement>());
  const c = useChange(users.reload);
  const me = session.user?.username;
  const list = users.data?.users ?? [];
  const close = () => {
    const user = changing;
    setChanging(null);
    if (user !== null) toggles.current.get(user)?.focus();
  };
  return (
    <section aria-labelledby="users-h">
      <h2 id="users-h">Users</h2>
      <Problem l={users} what="the users" />
      {!users.data && !users.error && <p class="muted">Loading the users…</p>}
      {list.length > 0 && (
        <div class="table-wrap" tabIndex={0} role="region" aria-labelledby="users-h">
          <table class="users">
            <caption class="sr-only">Users and their roles</caption>
            <thead>
              <tr>
                <th scope="col">User</th>
                <th scope="col">Role</th>
                <th scope="col">Added</th>
                <th scope="col">
                  <span class="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {list.map((u) => (
                <tr key={u.username} data-user={u.username}>
                  <th scope="row">
                    {u.username}
                    {u.username === me && <span class="muted"> (you)</span>}
                  </th>
                  <td data-role={u.role}>{u.role}</td>
                  <td>{ago(u.created)}</td>
                  <td>
                    <span class="actions">
                      <button
                        type="button"
                        class="quiet"
                        aria-expanded={changing === u.username}
                        aria-controls="password-form"
                        ref={(el) => {
                          if (el) toggles.current.set(u.username, el);
                          else toggles.current.delete(u.username);
                        }}
                        onClick={() => {
                          c.clear();
                          setChanging(changing === u.username ? null : u.username);
                        }}
                      >
                        Change password<span class="sr-only"> of {u.username}</span>
                      </button>
                      <Confirm
                        buttonClass="danger"
                        disabled={c.busy}
                        question={
                          u.username === me
                            ? "Remove yourself? Your session ends and your API keys are revoked."
                            : `Remove ${u.username}? Their sessions end and their API keys are revoked.`
                        }
                        yes={`Remove ${u.username}`}
                        onYes={() =>
                          void c.run(
                            `${u.username} removed.`,
                            () => session.call(`${auth}/user/${encodeURIComponent(u.username)}`, { method: "DELETE" }),
                            `${u.username} cannot be removed`,
                          )
                        }
                      >
                        Remove<span class="sr-only"> {u.username}</span>…
                      </Confirm>
                    </span>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {c.outcome}
      <div id="password-form">
        {changing && (
          <PasswordForm key={changing} user={changing} self={changing === me} onClose={close} onChanged={users.reload} />
        )}
      </div>
      <AddUser onAdded={users.reload} />
    </section>
  );
}

/** Fields for a new password, typed twice, checked as the gateway checks it. */
function NewPassword({ id, problem }: { id: string; problem: string | null }) {
  return (
    <>
      <div class="field">
        <label for={`${id}-1`}>
          Password <span class="muted">(at least {PASSWORD_MIN} characters)</span>
        </label>
        <input
          id={`${id}-1`}
          name="password"
          type="password"
          autocomplete="new-password"
          minLength={PASSWORD_MIN}
          required
          aria-invalid={problem ? "true" : undefined}
          aria-describedby={problem ? `${id}-e` : undefined}
        />
      </div>
      <div class="field">
        <label for={`${id}-2`}>Repeat the password</label>
        <input id={`${id}-2`} name="repeat" type="password" autocomplete="new-password" minLength={PASSWORD_MIN} required />
      </div>
      {problem && (
        <p class="error" id={`${id}-e`} role="alert">
          {problem}
        </p>
      )}
    </>
  );
}

/** A new password for `user`, its heading focused when it opens; their sessions end. */
function PasswordForm({ user, self, onClose, onChanged }: { user: string; self: boolean; onClose: () => void; onChanged: () => void }) {
  const [problem, setProblem] = useState<string | null>(null);
  const c = useChange(onChanged);
  const heading = useRef<HTMLHeadingElement>(null);
  useEffect(() => heading.current?.focus(), []);
  return (
    <form
      class="panel"
      noValidate
      aria-labelledby="password-h"
      data-password-for={user}
      onSubmit={async (e) => {
        e.preventDefault();
        const form = e.currentTarget;
        const f = new FormData(form);
        const password = String(f.get("password") ?? "");
        const p = passwordProblem(password, String(f.get("repeat") ?? ""));
        setProblem(p);
        if (p) return;
        const ok = await c.run(`The password of ${user} is changed; their sessions have ended.`, async () => {
          await session.call(`${auth}/user/${encodeURIComponent(user)}/password`, {
            method: "PUT",
            body: JSON.stringify({ password }),
          });
        });
        if (ok) form.reset();
      }}
    >
      <h3 id="password-h" tabIndex={-1} ref={heading}>
        New password for {user}
      </h3>
      <p class="muted">
        {self
          ? "Your session ends: log in again with the new password."
          : `Their sessions end: ${user} logs in again with the new password.`}
      </p>
      <NewPassword id="pw-change" problem={problem} />
      <div class="actions">
        <button type="submit" disabled={c.busy}>
          Change password
        </button>
        <button type="button" class="quiet" onClick={onClose}>
          Close
        </button>
      </div>
      {c.outcome}
    </form>
  );
}

/** A new user with a role and a first password. */
function AddUser({ onAdded }: { onAdded: () => void }) {
  const [role, setRole] = useState<Role>("viewer");
  const [problem, setProblem] = useState<string | null>(null);
  const [nameProblem, setNameProblem] = useState<string | null>(null);
  const c = useChange(onAdded);
  return (
    <form
      class="panel"
      noValidate
      aria-labelledby="add-user-h"
      onSubmit={async (e) => {
        e.preventDefault();
        const form = e.currentTarget;
        const f = new FormData(form);
        const username = String(f.get("username") ?? "").trim();
        const password = String(f.get("password") ?? "");
        const n = userNameProblem(username);
        const p = passwordProblem(password, String(f.get("repeat") ?? ""));
        setNameProblem(n);
        setProblem(p);
        if (n || p) return;
        const ok = await c.run(`${username} added as ${role}.`, async () => {
          await session.call(`${auth}/user`, { method: "POST", body: JSON.stringify({ username, password, role }) });
        });
        if (ok) {
          form.reset();
          setRole("viewer");
        }
      }}
    >
      <h3 id="add-user-h">Add a user</h3>
      <div class="field">
        <label for="new-user">User name</label>
        <input
          id="new-user"
          name="username"
          autocomplete="off"
          autocapitalize="off"
          spellcheck={false}
          maxLength={64}
          required
          aria-invalid={nameProblem ? "true" : undefined}
          aria-describedby={nameProblem ? "new-user-e" : "new-user-h"}
        />
        <span class="muted" id="new-user-h">
          Letters, digits, '.', '-', '_' or '@'
        </span>
        {nameProblem && (
          <span class="error" id="new-user-e" role="alert">
            {nameProblem}
          </span>
        )}
      </div>
      <div class="field">
        <label for="new-user-role">Role</label>
        <RoleSelect id="new-user-role" value={role} onChange={setRole} />
        <span class="muted">{ROLES.find((r) => r.role === role)?.what}</span>
      </div>
      <NewPassword id="pw-new" problem={problem} />
      <div class="actions">
        <button type="submit" disabled={c.busy}>
          Add user
        </button>
      </div>
      {c.outcome}
    </form>
  );
}

/** API keys for programs: made here with a role and shown once, listed, revoked. */
function Keys() {
  const keys = useLoad(() => session.call<{ apiKeys: ApiKey[] }>(`${auth}/apikey`), [], 30000);
  const [made, setMade] = useState<{ name: string; key: string } | null>(null);
  const c = useChange(keys.reload);
  const list = sortKeys(keys.data?.apiKeys ?? []);
  return (
    <section aria-labelledby="keys-h">
      <h2 id="keys-h">API keys</h2>
      <p class="muted">
        For programs: a key is sent as the header <code>X-API-Key: &lt;key&gt;</code> (or{" "}
        <code>Authorization: Bearer &lt;key&gt;</code>) and may do what its role may.
      </p>
      <Problem l={keys} what="the API keys" />
      {!keys.data && !keys.error && <p class="muted">Loading the API keys…</p>}
      {keys.data && list.length === 0 && <p class="muted">No API key yet.</p>}
      {list.length > 0 && (
        <div class="table-wrap" tabIndex={0} role="region" aria-labelledby="keys-h">
          <table class="keys">
            <caption class="sr-only">API keys</caption>
            <thead>
              <tr>
                <th scope="col">Key</th>
                <th scope="col">Role</th>
                <th scope="col">Made</th>
                <th scope="col">State</th>
              </tr>
            </thead>
            <tbody>
              {list.map((k) => (
                <tr key={k.id} data-key={k.name} data-key-id={k.id} class={k.revoked ? "revoked" : undefined}>
                  <th scope="row">
                    {k.name}
                    <span class="key-id muted">
                      ID <code>{k.id}</code>
                    </span>
                  </th>
                  <td>{k.role}</td>
                  <td>
                    {ago(k.created)} by {k.owner}
                  </td>
                  <td data-state={k.revoked ? "revoked" : "active"}>
                    {k.revoked ? (
                      `revoked ${ago(k.revoked)}`
                    ) : (
                      <span class="actions">
                        in use
                        <Confirm
                          buttonClass="danger"
                          disabled={c.busy}
                          question={`Revoke ${k.name}? Programs using it are refused from now on.`}
                          yes={`Revoke ${k.name}`}
                          onYes={() =>
                            void c.run(
                              `${k.name} revoked.`,
                              () => session.call(`${auth}/apikey/${encodeURIComponent(k.id)}`, { method: "DELETE" }),
                              `${k.name} cannot be revoked`,
                            )
                          }
                        >
                          Revoke<span class="sr-only"> {k.name}</span>…
                        </Confirm>
                      </span>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {c.outcome}
      {made && (
        <ShownOnce
          title={`The key ${made.name}, shown only now:`}
          advice="copy it and keep it where the program can read it. It will not be shown again."
          value={made.key}
          copy="Copy the key"
          onDone={() => setMade(null)}
        />
      )}
      <AddKey
        onMade={(name, key) => {
          setMade({ name, key });
          keys.reload();
        }}
      />
    </section>
  );
}

/** A new API key with a name and a role; `onMade` gets the key, which is not kept here. */
function AddKey({ onMade }: { onMade: (name: string, key: string) => void }) {
  const [role, setRole] = useState<Role>("viewer");
  const [problem, setProblem] = useState<string | null>(null);
  const c = useChange();
  return (
    <form
      class="panel"
      noValidate
      aria-labelledby="add-key-h"
      onSubmit={async (e) => {
        e.preventDefault();
        const form = e.currentTarget;
        const name = String(new FormData(form).get("name") ?? "").trim();
        const p = keyNameProblem(name);
        setProblem(p);
        if (p) return;
        // Said by the key shown once, not here.
        const ok = await c.run(null, async () => {
          const made = await session.call<{ name: string; key: string }>(`${auth}/apikey`, {
            method: "POST",
            body: JSON.stringify({ name, role }),
          });
          onMade(made.name, made.key);
        });
        if (ok) {
          form.reset();
          setRole("viewer");
        }
      }}
    >
      <h3 id="add-key-h">Make an API key</h3>
      <div class="field">
        <label for="new-key">Name</label>
        <input
          id="new-key"
          name="name"
          autocomplete="off"
          maxLength={128}
          required
          aria-invalid={problem ? "true" : undefined}
          aria-describedby={problem ? "new-key-e" : "new-key-h"}
        />
        <span class="muted" id="new-key-h">
          What uses it, e.g. "historian export"
        </span>
        {problem && (
          <span class="error" id="new-key-e" role="alert">
            {problem}
          </span>
        )}
      </div>
      <div class="field">
        <label for="new-key-role">Role</label>
        <RoleSelect id="new-key-role" value={role} onChange={setRole} />
        <span class="muted">{ROLES.find((r) => r.role === role)?.what}</span>
      </div>
      <div class="actions">
        <button type="submit" disabled={c.busy}>
          Make key
        </button>
      </div>
      {c.outcome}
    </form>
  );
}
