// A device's settings on its page: admin state, labels, autoEvents (changed through
// core-metadata's PATCH, as any EdgeX client does) and its credentials (a new secret shown
// once, revocation). Operators and admins see the controls; viewers see the values.
import { useState } from "preact/hooks";
import { refusedItem } from "../api";
import { session } from "../app";
import { Confirm, ShownOnce, useChange } from "../change";
import { intervalMs, parseLabels } from "../device-edit";
import { count } from "../format";
import { Problem, useLoad } from "../load";
import type { Device } from "./devices";

export interface AutoEvent {
  sourceName: string;
  interval: string;
  onChange?: boolean;
}

type Editable = Device & { autoEvents?: AutoEvent[] };

const metadata = "/core-metadata/api/v3";

/** Changes `fields` of `name` (EdgeX's PATCH /device: a list with one status per item). */
async function patch(name: string, fields: Partial<Editable>): Promise<void> {
  const answer = await session.call(`${metadata}/device`, {
    method: "PATCH",
    body: JSON.stringify([{ apiVersion: "v3", device: { name, ...fields } }]),
  });
  const refused = refusedItem(answer);
  if (refused) throw refused;
}

/** The settings section of a device's page; `onChanged` loads the device again after a
 * change, so the page shows what the node now has. */
export function Settings({
  device,
  sources,
  onChanged,
}: {
  device: Editable;
  /** What an autoEvent may read: the profile's readable resources and commands. */
  sources: string[];
  onChanged: () => void;
}) {
  const write = session.canWrite;
  return (
    <section aria-labelledby="settings-h" class="settings">
      <h2 id="settings-h">Settings</h2>
      <AdminState device={device} write={write} onChanged={onChanged} />
      <Labels device={device} write={write} onChanged={onChanged} />
      <AutoEvents device={device} sources={sources} write={write} onChanged={onChanged} />
      <Credentials name={device.name} write={write} onChanged={onChanged} />
    </section>
  );
}

/** Locked or unlocked: a locked device's commands are refused and its readings not taken. */
function AdminState({ device, write, onChanged }: { device: Editable; write: boolean; onChanged: () => void }) {
  const c = useChange(onChanged);
  const locked = device.adminState === "LOCKED";
  return (
    <div class="setting" data-setting="state">
      <h3>State</h3>
      <p>
        {locked ? "Locked: its commands are refused and its readings not taken." : "Unlocked: in service."}{" "}
        <span class="muted">Operating state {device.operatingState}.</span>
      </p>
      {write && (
        <button
          type="button"
          disabled={c.busy}
          onClick={() =>
            c.run(locked ? "unlocked" : "locked", () =>
              patch(device.name, { adminState: locked ? "UNLOCKED" : "LOCKED" }),
            )
          }
        >
          {locked ? "Unlock" : "Lock"}
        </button>
      )}
      {c.outcome}
    </div>
  );
}

/** The device's labels (what groups and rollouts select devices by), typed as one line. */
function Labels({ device, write, onChanged }: { device: Editable; write: boolean; onChanged: () => void }) {
  const c = useChange(onChanged);
  const labels = device.labels ?? [];
  if (!write) {
    return (
      <div class="setting">
        <h3>Labels</h3>
        <p>{labels.join(", ") || "None"}</p>
      </div>
    );
  }
  return (
    <form
      class="setting"
      data-setting="labels"
      aria-labelledby="labels-h"
      onSubmit={(e) => {
        e.preventDefault();
        const text = String(new FormData(e.currentTarget).get("labels") ?? "");
        void c.run("labels saved", () => patch(device.name, { labels: parseLabels(text) }));
      }}
    >
      <h3 id="labels-h">Labels</h3>
      <div class="field">
        <label for="labels-in">
          Labels <span class="muted">(separated by commas or spaces)</span>
        </label>
        <input id="labels-in" name="labels" key={labels.join(" ")} defaultValue={labels.join(", ")} />
      </div>
      <button type="submit" disabled={c.busy}>
        Save labels
      </button>
      {c.outcome}
    </form>
  );
}

/** What the device service reads by itself, and how often; an interval is checked before it
 * is sent. */
function AutoEvents({
  device,
  sources,
  write,
  onChanged,
}: {
  device: Editable;
  sources: string[];
  write: boolean;
  onChanged: () => void;
}) {
  const c = useChange(onChanged);
  const [invalid, setInvalid] = useState<string | null>(null);
  const events = device.autoEvents ?? [];
  const save = (next: AutoEvent[], what: string) => c.run(what, () => patch(device.name, { autoEvents: next }));
  return (
    <div class="setting" data-setting="autoevents">
      <h3 id="autoevents-h">AutoEvents</h3>
      {events.length === 0 ? (
        <p>None: the device is read only when asked.</p>
      ) : (
        <div class="table-wrap" tabIndex={0} role="region" aria-labelledby="autoevents-h">
          <table>
            <caption class="sr-only">AutoEvents of {device.name}</caption>
            <thead>
              <tr>
                <th scope="col">Reads</th>
                <th scope="col">Every</th>
                <th scope="col">Only changes</th>
                {write && <th scope="col">Change</th>}
              </tr>
            </thead>
            <tbody>
              {events.map((a, i) => (
                <tr key={`${a.sourceName}-${i}`} data-autoevent={a.sourceName}>
                  <th scope="row">{a.sourceName}</th>
                  <td>{a.interval}</td>
                  <td>{a.onChange ? "yes" : "no"}</td>
                  {write && (
                    <td>
                      <button
                        type="button"
                        class="quiet"
                        disabled={c.busy}
                        aria-label={`Remove the autoEvent reading ${a.sourceName} every ${a.interval}`}
                        onClick={() => save(events.filter((_, j) => j !== i), `${a.sourceName} no longer read`)}
                      >
                        Remove
                      </button>
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {write && sources.length > 0 && (
        <form
          class="inline"
          aria-label="Add an autoEvent"
          onSubmit={async (e) => {
            e.preventDefault();
            const form = e.currentTarget;
            const f = new FormData(form);
            const interval = String(f.get("interval") ?? "").trim();
            const checked = intervalMs(interval);
            if (!checked.ok) {
              setInvalid(checked.error);
              return;
            }
            setInvalid(null);
            const sourceName = String(f.get("source") ?? "");
            const next = [...events, { sourceName, interval, onChange: f.get("onChange") === "on" }];
            if (await save(next, `${sourceName} read every ${interval}`)) form.reset();
          }}
        >
          <div class="field">
            <label for="ae-source">Read</label>
            <select id="ae-source" name="source">
              {sources.map((s) => (
                <option key={s} value={s}>
                  {s}
                </option>
              ))}
            </select>
          </div>
          <div class="field">
            <label for="ae-interval">
              Every <span class="muted">(e.g. 10s, 500ms, 1m)</span>
            </label>
            <input
              id="ae-interval"
              name="interval"
              aria-invalid={invalid ? "true" : undefined}
              aria-describedby={invalid ? "ae-interval-e" : undefined}
            />
            {invalid && (
              <span class="error" id="ae-interval-e" role="alert">
                {invalid}
              </span>
            )}
          </div>
          <label class="check">
            <input type="checkbox" name="onChange" /> Only when the value changes
          </label>
          <button type="submit" disabled={c.busy}>
            Add autoEvent
          </button>
        </form>
      )}
      {c.outcome}
    </div>
  );
}

interface Credential {
  status?: string;
  secret?: boolean;
  certificates?: { fingerprint: string; issuer: string; status: string; notAfter?: number }[];
}

/** The device's own credentials: a secret (set or rotated here, shown once) and the
 * certificates the node issued or trusts; revoking ends all of them and locks it. */
function Credentials({ name, write, onChanged }: { name: string; write: boolean; onChanged: () => void }) {
  const path = `${metadata}/device/name/${encodeURIComponent(name)}`;
  const cred = useLoad(() => session.call<Credential>(`${path}/credential`), [name]);
  const [secret, setSecret] = useState<string | null>(null);
  const c = useChange(() => {
    cred.reload();
    onChanged();
  });
  const d = cred.data;
  const certs = d?.certificates ?? [];
  const newSecret = () =>
    c.run(d?.secret ? "a new secret is set; the old one no longer works" : "enrolled", async () => {
      const r = await session.call<{ secret?: string }>(`${path}/secret`, {
        method: "PUT",
        body: JSON.stringify({ apiVersion: "v3" }),
      });
      setSecret(r.secret ?? null);
    });
  return (
    <div class="setting" data-setting="credentials">
      <h3>Credentials</h3>
      <Problem l={cred} what="the credentials" />
      {d && (
        <p data-credential={d.secret ? "secret" : "none"}>
          {d.status === "revoked" ? "Revoked. " : ""}
          {d.secret ? "It has a secret of its own." : "It has no secret of its own."}{" "}
          {certs.length > 0 && `${count(certs.filter((x) => x.status === "active").length, "active certificate")}.`}
        </p>
      )}
      {certs.length > 0 && (
        <div class="table-wrap" tabIndex={0} role="region" aria-label="Certificates">
          <table>
            <caption class="sr-only">Certificates of {name}</caption>
            <thead>
              <tr>
                <th scope="col">Fingerprint</th>
                <th scope="col">Issuer</th>
                <th scope="col">Status</th>
                <th scope="col">Valid until</th>
              </tr>
            </thead>
            <tbody>
              {certs.map((x) => (
                <tr key={x.fingerprint}>
                  <th scope="row">
                    <code>{x.fingerprint.slice(0, 16)}</code>
                  </th>
                  <td>{x.issuer}</td>
                  <td>{x.status}</td>
                  <td>{x.notAfter ? new Date(x.notAfter * 1000).toLocaleDateString() : "–"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {secret && (
        <ShownOnce
          title="The new secret, shown only now:"
          advice="give it to the device; it is not shown again."
          value={secret}
          copy="Copy the secret"
          onDone={() => setSecret(null)}
        />
      )}
      {write && d && (
        <div class="actions">
          <button type="button" disabled={c.busy} onClick={newSecret}>
            {d.secret ? "Rotate secret" : "Enroll with a secret"}
          </button>
          <Confirm
            buttonClass="danger"
            disabled={c.busy}
            question={`Revoke ${name}? Its credentials stop working and it is locked; its history is kept.`}
            yes={`Revoke ${name}`}
            onYes={() => {
              setSecret(null);
              void c.run("revoked", () => session.call(`${path}/revoke`, { method: "POST", body: "{}" }));
            }}
          >
            Revoke…
          </Confirm>
        </div>
      )}
      {certs.some((x) => x.status === "active" && x.issuer === "node") && write && (
        <p class="muted">
          A certificate's key is made where the device is: rotate it with <code>outpost device rotate {name} --out DIR</code>.
        </p>
      )}
      {c.outcome}
    </div>
  );
}
