// The firmware page: signed artifacts (uploaded, checked against their signature first,
// deleted), rollouts (made, paused, resumed, canceled, with their phases' progress) and
// the devices' inventory, all from ota.
import { useState } from "preact/hooks";
import { ApiError } from "../api";
import { session } from "../app";
import { Confirm, Outcome, failure, holdFocus, useChange } from "../change";
import { bytes, count } from "../format";
import { Problem, age, useLoad, type Loaded } from "../load";
import {
  actionsFor,
  fileMismatch,
  hex,
  inGroup,
  otaMissing,
  parseSignatureFile,
  progress,
  progressText,
  rolloutRequest,
  type Counts,
  type Manifest,
  type RolloutAction,
  type Signed,
  type TargetKind,
} from "../firmware";
import "./firmware.css";

/** ota's API through the gateway. */
const OTA = "/ota/api/v3";

interface Artifact {
  manifest: Manifest;
  keyId: string;
  uploadedMs: number;
}

interface Rollout {
  name: string;
  artifact: { name: string; version: string };
  status: { state: string; reason?: string; automatic?: boolean };
  policy: { phases: number[]; failureCount: number; failurePercent: number; window?: { start: string; end: string } };
  openPhase: number;
  devices: number;
  counts: Counts;
  phases: { phase: number; percent: number | null; devices: number; counts: Counts }[];
  createdMs: number;
}

interface InventoryDevice {
  name: string;
  profileName: string;
  labels: string[];
  attributes: Record<string, string>;
  lastSeenMs: number | null;
  checkIn: "never" | "overdue" | "ok";
}

interface Group {
  name: string;
  labels: string[];
  profile: string;
  members: number;
}

/** The artifacts, or why ota is not there (the gateway has no such service). */
type ArtifactsOrMissing = { list: Artifact[] } | { missing: string };

/** An artifact as people name it: "pump-fw 2.1". */
const key = (a: { name: string; version: string }) => `${a.name} ${a.version}`;

/** Firmware: signed artifacts, rollouts and the devices' inventory, all from ota. */
export function Firmware() {
  const arts = useLoad<ArtifactsOrMissing>(
    async () => {
      try {
        const r = await session.call<{ artifacts: Artifact[] }>(`${OTA}/artifact/all`);
        return { list: r.artifacts ?? [] };
      } catch (e) {
        if (e instanceof ApiError && otaMissing(e.status)) return { missing: e.message };
        throw e;
      }
    },
    [],
    5000,
  );
  const missing = arts.data && "missing" in arts.data ? arts.data.missing : null;
  const list = arts.data && "list" in arts.data ? arts.data.list : [];
  return (
    <section aria-labelledby="firmware-h" class="firmware">
      <h1 id="firmware-h">Firmware</h1>
      {missing !== null ? (
        <NotEnabled why={missing} />
      ) : arts.data === null && arts.error === null ? (
        <p role="status">Loading firmware…</p>
      ) : (
        <Sections arts={arts} list={list} />
      )}
    </section>
  );
}

/** What to do when the node has no ota, instead of a raw error. */
function NotEnabled({ why }: { why: string }) {
  return (
    <div class="notice fw-off" role="status">
      <p>
        <strong>Firmware updates are not enabled on this node.</strong>
      </p>
      <p>
        To enable them, make a signing key with <code>outpost ota keygen</code> (keep the private key off the
        node), trust its public key in the node's configuration, and restart the node:
      </p>
      <pre>{`[ota]\nenabled = true\ntrusted_keys = ["ed25519:…"]`}</pre>
      <p class="muted">The node answered: {why}</p>
    </div>
  );
}

/** What ota has once its artifacts are known: they, the rollouts, the inventory. */
function Sections({ arts, list }: { arts: Loaded<ArtifactsOrMissing>; list: Artifact[] }) {
  const inventory = useLoad(
    () => session.call<{ devices: InventoryDevice[] }>(`${OTA}/inventory/all`).then((r) => r.devices ?? []),
    [],
    10000,
  );
  const groups = useLoad(
    () => session.call<{ groups: Group[] }>(`${OTA}/group/all`).then((r) => r.groups ?? []),
    [],
    30000,
  );
  return (
    <>
      <Artifacts l={arts} list={list} />
      <Rollouts artifacts={list} devices={inventory.data ?? []} groups={groups.data ?? []} />
      <Inventory l={inventory} groups={groups} />
    </>
  );
}

// ---- artifacts ----

/** The artifacts ota keeps, newest first; each deleted after a question. */
function Artifacts({ l, list }: { l: Loaded<ArtifactsOrMissing>; list: Artifact[] }) {
  const c = useChange(l.reload);
  const shown = [...list].sort((a, b) => b.uploadedMs - a.uploadedMs);
  const remove = (m: Manifest) =>
    void c.run(
      `Deleted ${key(m)}.`,
      () =>
        session.call(`${OTA}/artifact/name/${encodeURIComponent(m.name)}/version/${encodeURIComponent(m.version)}`, {
          method: "DELETE",
        }),
      `Cannot delete ${key(m)}`,
    );
  return (
    <section aria-labelledby="artifacts-h">
      <h2 id="artifacts-h">Artifacts</h2>
      <Problem l={l} what="the artifacts" />
      {l.data && (
        <p class="muted" role="status">
          {list.length === 0 ? "No artifact uploaded yet." : count(list.length, "artifact")}
        </p>
      )}
      {shown.length > 0 && (
        <div class="table-wrap" tabIndex={0} role="region" aria-label="Artifacts table">
          <table>
            <caption class="sr-only">Artifacts</caption>
            <thead>
              <tr>
                <th scope="col">Artifact</th>
                <th scope="col">Size</th>
                <th scope="col">Compatible with</th>
                <th scope="col">Signing key</th>
                <th scope="col">Uploaded</th>
                {session.canWrite && <th scope="col">Actions</th>}
              </tr>
            </thead>
            <tbody>
              {shown.map((a) => {
                const k = key(a.manifest);
                return (
                  <tr key={k} data-artifact={k}>
                    <th scope="row">
                      {a.manifest.name} <span class="fw-version">{a.manifest.version}</span>
                    </th>
                    <td>{bytes(a.manifest.size)}</td>
                    <td>{a.manifest.compatible.join(", ")}</td>
                    <td>
                      <code>{a.keyId}</code>
                    </td>
                    <td>{age(a.uploadedMs)} ago</td>
                    {session.canWrite && (
                      <td>
                        <Confirm
                          buttonClass="quiet"
                          disabled={c.busy}
                          question={`Delete ${k}?`}
                          yes={`Yes, delete ${k}`}
                          onYes={() => remove(a.manifest)}
                        >
                          Delete<span class="sr-only"> {k}</span>
                        </Confirm>
                      </td>
                    )}
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
      {c.outcome}
      {session.canWrite && (
        <Upload
          onDone={() => {
            c.clear();
            l.reload();
          }}
        />
      )}
    </section>
  );
}

/** Why ota refused an upload, with what to do about it. */
function uploadRefusal(e: ApiError): string {
  const hint =
    e.status === 403
      ? " The node does not trust the key that signed it: add its public key to [ota] trusted_keys."
      : e.status === 409
        ? " Delete it first, or sign the file as another version."
        : e.status === 422
          ? " The file that arrived is not the one that was signed."
          : "";
  return `The node refused the upload: ${e.message}.${hint}`;
}

/** Upload of a signed artifact: the firmware file and the signature file `outpost ota sign`
 * wrote; the file is checked against the signed size and SHA-256 before it is sent. */
function Upload({ onDone }: { onDone: () => void }) {
  const [signed, setSigned] = useState<Signed | null>(null);
  const [sigError, setSigError] = useState<string | null>(null);
  const [status, setStatus] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const readSignature = async (input: HTMLInputElement) => {
    setSigned(null);
    setSigError(null);
    const f = input.files?.[0];
    if (!f) return;
    // A signature file is small; anything large is not one.
    const text = f.size > 64 * 1024 ? "" : await f.text().catch(() => "");
    // Another file chosen while this one was read: that one's reading counts.
    if (input.files?.[0] !== f) return;
    const r = parseSignatureFile(text);
    if (r.ok) setSigned(r.value);
    else setSigError(`${f.name}: ${r.error}`);
  };
  return (
    <details class="command fw-form" data-form="upload">
      <summary>Upload an artifact</summary>
      <form
        aria-label="Upload an artifact"
        onSubmit={async (e) => {
          e.preventDefault();
          const form = e.currentTarget;
          const file = (form.elements.namedItem("firmware") as HTMLInputElement).files?.[0];
          setError(null);
          setStatus(null);
          if (!file || !signed) {
            setError(!file ? "Choose the firmware file." : "Choose its signature file (FILE.sig.json).");
            return;
          }
          const m = signed.manifest;
          const restoreFocus = holdFocus();
          setBusy(true);
          try {
            let sha: string | null = null;
            if (file.size === m.size && globalThis.crypto?.subtle) {
              setStatus(`Checking ${file.name} against the signed SHA-256…`);
              sha = hex(await crypto.subtle.digest("SHA-256", await file.arrayBuffer()));
            }
            const wrong = fileMismatch(m, file.name, file.size, sha);
            if (wrong) {
              setStatus(null);
              setError(wrong);
              return;
            }
            setStatus(`Uploading ${key(m)}, ${bytes(file.size)}…`);
            const up = await session.call<{ keyId: string; size: number }>(`${OTA}/artifact`, {
              method: "POST",
              body: file,
              headers: {
                "content-type": "application/octet-stream",
                "x-outpost-manifest": signed.manifestBase64,
                "x-outpost-signature": signed.signature,
              },
            });
            setStatus(`Uploaded ${key(m)} (${bytes(up.size)}), signed by key ${up.keyId}.`);
            form.reset();
            setSigned(null);
            onDone();
          } catch (err) {
            setStatus(null);
            setError(err instanceof ApiError && err.status !== 0 ? uploadRefusal(err) : failure(err));
          } finally {
            setBusy(false);
            restoreFocus();
          }
        }}
      >
        <p class="muted">
          Sign the file where the signing key is, with{" "}
          <code>outpost ota sign FILE --name N --version V --compatible TYPE --key ota-signing.key</code>; it writes{" "}
          <code>FILE.sig.json</code>.
        </p>
        <div class="field">
          <label for="fw-file">Firmware file</label>
          <input id="fw-file" name="firmware" type="file" required />
        </div>
        <div class="field">
          <label for="fw-sig">Signature file (.sig.json)</label>
          <input
            id="fw-sig"
            name="signature"
            type="file"
            accept=".json,application/json"
            required
            aria-invalid={sigError ? "true" : undefined}
            aria-describedby="fw-sig-about"
            onChange={(e) => readSignature(e.currentTarget)}
          />
          <span id="fw-sig-about" class={sigError ? "error" : "muted"} role="status">
            {sigError ??
              (signed
                ? `Signed: ${key(signed.manifest)}, ${bytes(signed.manifest.size)}, for ${signed.manifest.compatible.join(", ")} (${signed.manifest.payloadType})`
                : "")}
          </span>
        </div>
        <button type="submit" disabled={busy}>
          Upload
        </button>
        <Outcome done={status} error={error} />
      </form>
    </details>
  );
}

// ---- rollouts ----

const ACTION_TITLES: Record<RolloutAction, string> = { pause: "Pause", resume: "Resume", cancel: "Cancel" };

/** ota's rollouts, newest first, polled often enough to follow one; a new one made here. */
function Rollouts({ artifacts, devices, groups }: { artifacts: Artifact[]; devices: InventoryDevice[]; groups: Group[] }) {
  const l = useLoad(
    () => session.call<{ rollouts: Rollout[] }>(`${OTA}/rollout/all`).then((r) => r.rollouts ?? []),
    [],
    3000,
  );
  const all = [...(l.data ?? [])].reverse();
  const active = all.filter((r) => actionsFor(r.status.state).length > 0).length;
  return (
    <section aria-labelledby="rollouts-h">
      <h2 id="rollouts-h">Rollouts</h2>
      <Problem l={l} what="the rollouts" />
      {l.data && (
        <p class="muted" role="status">
          {all.length === 0 ? "No rollout yet." : `${count(all.length, "rollout")}, ${active} under way`}
        </p>
      )}
      <ul class="fw-rollouts">
        {all.map((r) => (
          <RolloutCard key={r.name} r={r} onChanged={l.reload} />
        ))}
      </ul>
      {session.canWrite && artifacts.length > 0 && (
        <NewRollout artifacts={artifacts} devices={devices} groups={groups} onDone={l.reload} />
      )}
    </section>
  );
}

/** One rollout: its state, policy and phases, and what its state allows (pause, resume,
 * cancel after a question). */
function RolloutCard({ r, onChanged }: { r: Rollout; onChanged: () => void }) {
  const c = useChange(onChanged);
  const state = r.status.state;
  const all = progress(r.devices, r.counts);
  // The card shows the new state once loaded again.
  const act = (a: RolloutAction) =>
    void c.run(
      null,
      () => session.call(`${OTA}/rollout/name/${encodeURIComponent(r.name)}/${a}`, { method: "POST" }),
      `Cannot ${a} ${r.name}`,
    );
  return (
    <li class="card fw-rollout" data-rollout={r.name} data-state={state}>
      <h3>
        {r.name} <span class={`fw-state ${state}`}>{state}</span>
      </h3>
      {r.status.reason && (
        <p class={state === "failed" || r.status.automatic ? "error" : "muted"}>
          {r.status.automatic ? "Paused by itself: " : ""}
          {r.status.reason}
        </p>
      )}
      <dl class="facts">
        <dt>Artifact</dt>
        <dd>{key(r.artifact)}</dd>
        <dt>Devices</dt>
        <dd>{progressText(all)}</dd>
        <dt>Failures</dt>
        <dd class={all.failed > 0 ? "error" : undefined}>
          {all.failed} <span class="muted">(pauses at {r.policy.failureCount} or {r.policy.failurePercent} %)</span>
        </dd>
        {r.policy.window && (
          <>
            <dt>Window</dt>
            <dd>
              {r.policy.window.start}–{r.policy.window.end} UTC
            </dd>
          </>
        )}
        <dt>Created</dt>
        <dd>{age(r.createdMs)} ago</dd>
      </dl>
      <ol class="fw-phases" aria-label={`Phases of ${r.name}`}>
        {r.phases.map((p) => {
          const pr = progress(p.devices, p.counts);
          const open = p.phase <= r.openPhase;
          const text = progressText(pr);
          return (
            <li key={p.phase} data-phase={p.phase}>
              <span>
                Phase {p.phase + 1}
                {p.percent !== null && <span class="muted"> · up to {p.percent} %</span>}
                <span class="muted"> · {open ? "open" : "not open yet"}</span>
              </span>
              <progress
                max={Math.max(1, pr.total)}
                value={pr.done}
                aria-label={`Phase ${p.phase + 1} of ${r.name}: ${text}`}
              />
              <span class={pr.failed > 0 ? "error" : undefined}>{text}</span>
            </li>
          );
        })}
      </ol>
      {session.canWrite && actionsFor(state).length > 0 && (
        <div class="fw-actions">
          {/* Keyed by place: the button pressed stays the same element as Pause turns to
              Resume, so it keeps the focus. */}
          {actionsFor(state).map((a, i) =>
            a === "cancel" ? (
              <Confirm
                key={i}
                buttonClass="quiet"
                disabled={c.busy}
                question={`Cancel ${r.name}? Devices not done yet are canceled.`}
                yes={`Yes, cancel ${r.name}`}
                onYes={() => act(a)}
              >
                {ACTION_TITLES[a]}
                <span class="sr-only"> {r.name}</span>
              </Confirm>
            ) : (
              <button key={i} type="button" disabled={c.busy} onClick={() => act(a)}>
                {ACTION_TITLES[a]}
                <span class="sr-only"> {r.name}</span>
              </button>
            ),
          )}
        </div>
      )}
      {c.outcome}
    </li>
  );
}

/** A new rollout: the artifact, its target and the basics of its policy (the rest is ota's
 * default). */
function NewRollout({
  artifacts,
  devices,
  groups,
  onDone,
}: {
  artifacts: Artifact[];
  devices: InventoryDevice[];
  groups: Group[];
  onDone: () => void;
}) {
  const [artifact, setArtifact] = useState("");
  const [kind, setKind] = useState<TargetKind>("devices");
  const [chosen, setChosen] = useState<string[]>([]);
  const c = useChange(onDone);
  const a = (artifacts.find((x) => key(x.manifest) === artifact) ?? artifacts[0]).manifest;
  const fit = devices.filter((d) => a.compatible.includes(d.profileName)).sort((x, y) => x.name.localeCompare(y.name));
  return (
    <details class="command fw-form" data-form="rollout">
      <summary>New rollout</summary>
      <form
        aria-label="New rollout"
        onSubmit={async (e) => {
          e.preventDefault();
          const form = e.currentTarget;
          const f = new FormData(form);
          const text = (n: string) => String(f.get(n) ?? "");
          const req = rolloutRequest({
            name: text("name"),
            artifact: { name: a.name, version: a.version },
            kind,
            // Only devices still listed for this artifact (another may have been chosen since).
            devices: chosen.filter((n) => fit.some((d) => d.name === n)),
            labels: text("labels"),
            group: text("group"),
            phases: text("phases"),
            failureCount: text("failureCount"),
            windowStart: text("windowStart"),
            windowEnd: text("windowEnd"),
          });
          if (!req.ok) {
            c.refuse(req.error);
            return;
          }
          const ok = await c.run(
            (r: Rollout) => `Created rollout ${r.name} of ${key(r.artifact)} to ${count(r.devices, "device")}.`,
            () => session.call<Rollout>(`${OTA}/rollout`, { method: "POST", body: JSON.stringify(req.value) }),
            "The node refused the rollout",
          );
          if (ok) {
            form.reset();
            setChosen([]);
          }
        }}
      >
        <div class="field">
          <label for="ro-name">Rollout name</label>
          <input id="ro-name" name="name" required autocomplete="off" />
        </div>
        <div class="field">
          <label for="ro-artifact">Artifact</label>
          <select id="ro-artifact" value={key(a)} onChange={(e) => setArtifact(e.currentTarget.value)}>
            {artifacts.map((x) => (
              <option key={key(x.manifest)} value={key(x.manifest)}>
                {key(x.manifest)}
              </option>
            ))}
          </select>
        </div>
        <fieldset class="fw-target">
          <legend>Target</legend>
          {(["devices", "labels", "group"] as TargetKind[]).map((k) => (
            <label key={k} class="fw-check">
              <input type="radio" name="kind" value={k} checked={kind === k} onChange={() => setKind(k)} />
              {k === "devices" ? "Devices by name" : k === "labels" ? "Devices with labels" : "A group"}
            </label>
          ))}
        </fieldset>
        {kind === "devices" && (
          <fieldset class="fw-devices">
            <legend>Devices that may install {key(a)}</legend>
            {fit.length === 0 && <p class="muted">No device of type {a.compatible.join(", ")}.</p>}
            {fit.map((d) => (
              <label key={d.name} class="fw-check">
                <input
                  type="checkbox"
                  checked={chosen.includes(d.name)}
                  onChange={(e) => {
                    const on = e.currentTarget.checked;
                    setChosen((c) => (on ? [...c, d.name] : c.filter((n) => n !== d.name)));
                  }}
                />
                {d.name}
              </label>
            ))}
          </fieldset>
        )}
        {kind === "labels" && (
          <div class="field">
            <label for="ro-labels">Labels (devices carrying all of them, comma-separated)</label>
            <input id="ro-labels" name="labels" autocomplete="off" />
          </div>
        )}
        {kind === "group" && (
          <div class="field">
            <label for="ro-group">Group</label>
            <select id="ro-group" name="group">
              {groups.map((g) => (
                <option key={g.name} value={g.name}>
                  {g.name} ({g.members} devices)
                </option>
              ))}
            </select>
            {groups.length === 0 && <span class="muted">No group yet (outpost device group add).</span>}
          </div>
        )}
        <div class="field">
          <label for="ro-phases">Phases (cumulative % of the devices)</label>
          <input id="ro-phases" name="phases" defaultValue="1, 10, 100" autocomplete="off" />
        </div>
        <div class="field">
          <label for="ro-failures">Pause after this many failed devices</label>
          <input id="ro-failures" name="failureCount" type="number" min={1} step={1} defaultValue="3" />
        </div>
        <fieldset class="fw-window">
          <legend>Maintenance window, daily, UTC (optional)</legend>
          <label>
            From
            <input name="windowStart" type="time" />
          </label>
          <label>
            To
            <input name="windowEnd" type="time" />
          </label>
        </fieldset>
        <button type="submit" disabled={c.busy}>
          Create rollout
        </button>
        {c.outcome}
      </form>
    </details>
  );
}

// ---- inventory ----

const CHECK_IN: Record<InventoryDevice["checkIn"], string> = { ok: "OK", overdue: "Overdue", never: "Never" };

/** The devices ota knows, with what they last reported and whether they check in; a group
 * chosen shows only its members. */
function Inventory({ l, groups }: { l: Loaded<InventoryDevice[]>; groups: Loaded<Group[]> }) {
  const [group, setGroup] = useState("");
  const g = (groups.data ?? []).find((x) => x.name === group);
  const all = l.data ?? [];
  const shown = all.filter((d) => !g || inGroup(d, g)).sort((a, b) => a.name.localeCompare(b.name));
  const overdue = shown.filter((d) => d.checkIn === "overdue").length;
  const never = shown.filter((d) => d.checkIn === "never").length;
  return (
    <section aria-labelledby="inventory-h">
      <h2 id="inventory-h">Inventory</h2>
      <Problem l={l} what="the inventory" />
      <Problem l={groups} what="the groups" />
      {(groups.data ?? []).length > 0 && (
        <div class="filters">
          <label>
            Group
            <select value={group} onChange={(e) => setGroup(e.currentTarget.value)}>
              <option value="">All devices</option>
              {(groups.data ?? []).map((x) => (
                <option key={x.name} value={x.name}>
                  {x.name} ({[...x.labels, x.profile].filter((s) => s).join(", ")})
                </option>
              ))}
            </select>
          </label>
        </div>
      )}
      {l.data && (
        <p class="muted" role="status">
          {count(shown.length, "device")}, {overdue} overdue, {never} never checked in
        </p>
      )}
      {shown.length > 0 && (
        <div class="table-wrap" tabIndex={0} role="region" aria-label="Inventory table">
          <table>
            <caption class="sr-only">Devices known to firmware updates, with what they report</caption>
            <thead>
              <tr>
                <th scope="col">Device</th>
                <th scope="col">Check-in</th>
                <th scope="col">Firmware</th>
                <th scope="col">Last seen</th>
                <th scope="col">Type</th>
                <th scope="col">Reported</th>
                <th scope="col">Labels</th>
              </tr>
            </thead>
            <tbody>
              {shown.map((d) => {
                const { firmware, ...rest } = d.attributes ?? {};
                return (
                  <tr key={d.name} data-device={d.name} data-check-in={d.checkIn}>
                    <th scope="row">{d.name}</th>
                    <td>
                      <span class={d.checkIn === "ok" ? "status up" : d.checkIn === "overdue" ? "status down" : "muted"}>
                        {CHECK_IN[d.checkIn]}
                      </span>
                    </td>
                    <td>{firmware ?? "–"}</td>
                    <td>{d.lastSeenMs !== null ? `${age(d.lastSeenMs)} ago` : "never"}</td>
                    <td>{d.profileName}</td>
                    <td>
                      {Object.entries(rest)
                        .map(([k, v]) => `${k}: ${v}`)
                        .join(", ") || "–"}
                    </td>
                    <td>{d.labels.join(", ") || "–"}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
      <p class="muted">
        Overdue: not checked in for longer than the node allows (<code>[ota] overdue_after_s</code>, three poll
        intervals by default).
      </p>
    </section>
  );
}
