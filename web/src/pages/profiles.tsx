// The profiles page: device profiles (each viewable), device services, and an upload of a
// profile whose refusal is shown at the lines it is about.
import { Fragment } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError } from "../api";
import { session } from "../app";
import { Outcome, failure, holdFocus } from "../change";
import { count } from "../format";
import { Problem, age, useLoad, type Loaded } from "../load";
import { excerpt, locateErrors, profileName, type LineError } from "../profile-errors";
import "./profiles.css";

const metadata = "/core-metadata/api/v3";

interface Resource {
  name: string;
  description?: string;
  isHidden?: boolean;
  properties: {
    valueType: string;
    readWrite?: string;
    units?: string;
    minimum?: number | string;
    maximum?: number | string;
    defaultValue?: string;
  };
}

interface Command {
  name: string;
  isHidden?: boolean;
  readWrite?: string;
  resourceOperations?: { deviceResource: string; defaultValue?: string }[];
}

interface Profile {
  name: string;
  description?: string;
  manufacturer?: string;
  model?: string;
  labels?: string[];
  deviceResources?: Resource[];
  deviceCommands?: Command[];
  linkedDeviceCount?: number;
}

interface DeviceService {
  name: string;
  description?: string;
  baseAddress: string;
  adminState: string;
  labels?: string[];
  lastConnected?: number;
}

/** As many as one answer holds (EdgeX's MaxResultCount, 1024 by default). */
const LIMIT = 1024;

/** Device profiles (each viewable: its resources and commands), device services, and for
 * operators an upload of a profile's YAML with core-metadata's complaints shown at their lines. */
export function Profiles() {
  const profiles = useLoad(
    () => session.call<{ totalCount?: number; profiles: Profile[] }>(`${metadata}/deviceprofile/all?limit=${LIMIT}`),
    [],
    30000,
  );
  const services = useLoad(
    () => session.call<{ services: DeviceService[] }>(`${metadata}/deviceservice/all?limit=${LIMIT}`),
    [],
    30000,
  );
  const [q, setQ] = useState("");
  const [viewing, setViewing] = useState<string | null>(null);
  /** Each profile's button, to go back to when its view is closed. */
  const buttons = useRef(new Map<string, HTMLButtonElement>());
  const close = () => {
    if (viewing !== null) buttons.current.get(viewing)?.focus();
    setViewing(null);
  };
  const all = profiles.data?.profiles ?? [];
  const shown = all
    .filter((p) => p.name.toLowerCase().includes(q.trim().toLowerCase()))
    .sort((a, b) => a.name.localeCompare(b.name));
  const viewed = all.find((p) => p.name === viewing) ?? null;
  const total = profiles.data?.totalCount ?? all.length;
  return (
    <section aria-labelledby="profiles-h">
      <h1 id="profiles-h">Profiles and device services</h1>
      <h2 id="profiles-list-h">Device profiles</h2>
      <Problem l={profiles} what="the profiles" />
      <div class="filters">
        <label>
          Search profiles
          <input type="search" value={q} onInput={(e) => setQ(e.currentTarget.value)} />
        </label>
      </div>
      <p class="muted" role="status">
        {profiles.data ? `${shown.length} of ${total} profiles` : "Loading the profiles…"}
        {total > all.length && ` (the first ${all.length} are listed)`}
      </p>
      <ul class="cards profiles" aria-labelledby="profiles-list-h">
        {shown.map((p) => (
          <li key={p.name} class={`card${p.name === viewing ? " chosen" : ""}`} data-profile={p.name}>
            <button
              type="button"
              class="link"
              aria-expanded={p.name === viewing}
              aria-controls="profile-view"
              ref={(el) => {
                if (el) buttons.current.set(p.name, el);
                else buttons.current.delete(p.name);
              }}
              onClick={() => setViewing(p.name === viewing ? null : p.name)}
            >
              {p.name}
            </button>
            <span class="muted">{[p.manufacturer, p.model].filter(Boolean).join(", ") || "–"}</span>
            <span data-counts>
              {count(p.deviceResources?.length ?? 0, "resource")} · {count(p.deviceCommands?.length ?? 0, "command")}
              {p.linkedDeviceCount !== undefined && <> · used by {count(p.linkedDeviceCount, "device")}</>}
            </span>
          </li>
        ))}
      </ul>
      <div id="profile-view">{viewed && <ProfileView p={viewed} onClose={close} />}</div>
      <Services l={services} />
      {session.canWrite ? (
        <Upload onAdded={profiles.reload} />
      ) : (
        <p class="muted">Uploading a profile needs the operator or admin role.</p>
      )}
    </section>
  );
}

/** One profile: what it says of itself, its resources and its commands. */
function ProfileView({ p, onClose }: { p: Profile; onClose: () => void }) {
  const heading = useRef<HTMLHeadingElement>(null);
  // A profile chosen: its view is where the reader goes next.
  useEffect(() => heading.current?.focus(), [p.name]);
  const resources = p.deviceResources ?? [];
  const commands = p.deviceCommands ?? [];
  return (
    <section class="profile-view" aria-labelledby="profile-view-h" data-viewing={p.name}>
      <h2 id="profile-view-h" tabIndex={-1} ref={heading}>
        Profile {p.name}
      </h2>
      <dl class="facts">
        <dt>Description</dt>
        <dd>{p.description || "–"}</dd>
        <dt>Manufacturer</dt>
        <dd>{p.manufacturer || "–"}</dd>
        <dt>Model</dt>
        <dd>{p.model || "–"}</dd>
        <dt>Labels</dt>
        <dd>{(p.labels ?? []).join(", ") || "–"}</dd>
        <dt>Devices using it</dt>
        <dd>{p.linkedDeviceCount ?? "–"}</dd>
      </dl>
      <h3 id="resources-h">Resources ({resources.length})</h3>
      <div class="table-wrap" tabIndex={0} role="region" aria-labelledby="resources-h">
        <table class="resources">
          <caption class="sr-only">Resources of {p.name}</caption>
          <thead>
            <tr>
              <th scope="col">Resource</th>
              <th scope="col">Value type</th>
              <th scope="col">Read/write</th>
              <th scope="col">Units</th>
              <th scope="col">Minimum</th>
              <th scope="col">Maximum</th>
              <th scope="col">Default</th>
            </tr>
          </thead>
          <tbody>
            {resources.map((r) => (
              <tr key={r.name} data-resource={r.name}>
                <th scope="row">
                  {r.name}
                  {r.isHidden && <span class="muted"> (hidden)</span>}
                </th>
                <td>{r.properties.valueType}</td>
                <td>{readWrite(r.properties.readWrite ?? "R")}</td>
                <td>{r.properties.units || "–"}</td>
                <td>{shownValue(r.properties.minimum)}</td>
                <td>{shownValue(r.properties.maximum)}</td>
                <td>{shownValue(r.properties.defaultValue)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <h3 id="commands-h">Commands ({commands.length})</h3>
      {commands.length === 0 ? (
        <p class="muted">None: its resources are read and written one by one.</p>
      ) : (
        <div class="table-wrap" tabIndex={0} role="region" aria-labelledby="commands-h">
          <table class="commands">
            <caption class="sr-only">Commands of {p.name}</caption>
            <thead>
              <tr>
                <th scope="col">Command</th>
                <th scope="col">Read/write</th>
                <th scope="col">Resources</th>
              </tr>
            </thead>
            <tbody>
              {commands.map((c) => (
                <tr key={c.name} data-command={c.name}>
                  <th scope="row">
                    {c.name}
                    {c.isHidden && <span class="muted"> (hidden)</span>}
                  </th>
                  <td>{readWrite(c.readWrite ?? "R")}</td>
                  <td>
                    {(c.resourceOperations ?? [])
                      .map((o) => (o.defaultValue ? `${o.deviceResource} (default ${o.defaultValue})` : o.deviceResource))
                      .join(", ")}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <p>
        <button type="button" class="quiet" onClick={onClose}>
          Close {p.name}
        </button>
      </p>
    </section>
  );
}

/** EdgeX's R, W or RW in words. */
function readWrite(rw: string): string {
  return rw === "R" ? "read" : rw === "W" ? "write" : "read, write";
}

/** A property as the profile gives it, or a dash for none. */
function shownValue(v: number | string | undefined): string {
  return v === undefined || v === "" ? "–" : String(v);
}

/** The device services metadata knows: where each is, and whether it is locked. */
function Services({ l }: { l: Loaded<{ services: DeviceService[] }> }) {
  const list = [...(l.data?.services ?? [])].sort((a, b) => a.name.localeCompare(b.name));
  const connected = list.some((s) => s.lastConnected);
  return (
    <>
      <h2 id="services-h">Device services</h2>
      <Problem l={l} what="the device services" />
      {!l.data && !l.error && <p class="muted">Loading the device services…</p>}
      {l.data && list.length === 0 && <p class="muted">No device service is registered.</p>}
      {list.length > 0 && (
        <div class="table-wrap" tabIndex={0} role="region" aria-labelledby="services-h">
          <table class="services">
            <caption class="sr-only">Device services</caption>
            <thead>
              <tr>
                <th scope="col">Service</th>
                <th scope="col">Address</th>
                <th scope="col">Admin state</th>
                {connected && <th scope="col">Last connected</th>}
              </tr>
            </thead>
            <tbody>
              {list.map((s) => (
                <tr key={s.name} data-service={s.name}>
                  <th scope="row">{s.name}</th>
                  <td class="address">{s.baseAddress}</td>
                  <td>
                    <span class={`status ${s.adminState === "UNLOCKED" ? "up" : "down"}`}>{s.adminState}</span>
                  </td>
                  {connected && <td>{s.lastConnected ? `${age(s.lastConnected)} ago` : "–"}</td>}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}

/** What came of an upload: the profile added or replaced; refused with problems at their
 * lines, as one that exists already (which may be replaced), or for another reason. */
type UploadOutcome =
  | { kind: "added" | "replaced"; name: string | null }
  | { kind: "invalid"; text: string; errors: LineError[] }
  | { kind: "exists"; message: string; name: string | null }
  | { kind: "refused"; message: string };

/** A profile's YAML (or JSON), from a file or pasted, sent to core-metadata as its upload
 * form takes it; what it refuses is shown beside the lines it is about. */
function Upload({ onAdded }: { onAdded: () => void }) {
  const [text, setText] = useState("");
  const [file, setFile] = useState("profile.yaml");
  const [busy, setBusy] = useState(false);
  const [outcome, setOutcome] = useState<UploadOutcome | null>(null);
  const editor = useRef<HTMLTextAreaElement>(null);

  const send = async (method: "POST" | "PUT") => {
    if (text.trim() === "") {
      setOutcome({ kind: "refused", message: "Choose a file or paste a profile first." });
      return;
    }
    const sent = text;
    const form = new FormData();
    form.append("file", new Blob([sent], { type: "application/yaml" }), file);
    const restoreFocus = holdFocus();
    setBusy(true);
    setOutcome(null);
    try {
      await session.call(`${metadata}/deviceprofile/uploadfile`, { method, body: form });
      setOutcome({ kind: method === "POST" ? "added" : "replaced", name: profileName(sent) });
      onAdded();
    } catch (e) {
      const message = failure(e);
      if (e instanceof ApiError && e.status === 400) {
        setOutcome({ kind: "invalid", text: sent, errors: locateErrors(message, sent) });
      } else if (e instanceof ApiError && e.status === 409 && method === "POST" && / already exists$/.test(message)) {
        setOutcome({ kind: "exists", message, name: profileName(sent) });
      } else {
        setOutcome({ kind: "refused", message });
      }
    } finally {
      setBusy(false);
      restoreFocus();
    }
  };

  /** Puts the cursor on line `n` of the editor, with the line selected. */
  const goTo = (n: number) => {
    const ta = editor.current;
    if (!ta) return;
    const lines = ta.value.split("\n");
    const start = lines.slice(0, n - 1).reduce((s, l) => s + l.length + 1, 0);
    ta.focus();
    ta.setSelectionRange(start, start + (lines[n - 1]?.length ?? 0));
  };

  return (
    <section aria-labelledby="upload-h" class="upload">
      <h2 id="upload-h">Upload a profile</h2>
      <p class="muted">
        An EdgeX device profile in YAML (or JSON). core-metadata checks it; what it refuses is shown at its line.
      </p>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          void send("POST");
        }}
      >
        <div class="field">
          <label for="profile-file">Profile file</label>
          <input
            id="profile-file"
            type="file"
            accept=".yaml,.yml,.json,application/yaml,application/json,text/yaml"
            onChange={async (e) => {
              const input = e.currentTarget;
              const f = input.files?.[0];
              if (!f) return;
              const read = await f.text().then(
                (t) => ({ ok: true as const, t }),
                () => ({ ok: false as const }),
              );
              // Another file chosen while this one was read: that one's text counts.
              if (input.files?.[0] !== f) return;
              if (!read.ok) {
                setOutcome({ kind: "refused", message: `${f.name} cannot be read.` });
                return;
              }
              setFile(f.name);
              setText(read.t);
              setOutcome(null);
            }}
          />
        </div>
        <div class="field wide">
          <label for="profile-text">Profile YAML</label>
          <textarea
            id="profile-text"
            ref={editor}
            rows={14}
            spellcheck={false}
            autocapitalize="off"
            autocomplete="off"
            wrap="off"
            value={text}
            onInput={(e) => setText(e.currentTarget.value)}
          />
        </div>
        <div class="actions">
          <button type="submit" disabled={busy}>
            {busy ? "Uploading…" : "Upload"}
          </button>
        </div>
      </form>
      <Outcome
        done={
          outcome?.kind === "added" || outcome?.kind === "replaced"
            ? `Profile ${outcome.name ? `${outcome.name} ` : ""}${outcome.kind}.`
            : null
        }
        error={outcome?.kind === "refused" ? outcome.message : null}
      />
      {outcome?.kind === "exists" && (
        <div class="error-box" role="alert">
          <p class="error">{outcome.message}.</p>
          <p>
            Replacing it changes the profile its devices use; devices keep reading what their autoEvents name only if
            the new profile still has it.
          </p>
          <button type="button" class="danger" disabled={busy} onClick={() => void send("PUT")}>
            Replace {outcome.name ?? "the profile"}
          </button>
        </div>
      )}
      {outcome?.kind === "invalid" && <Invalid text={outcome.text} errors={outcome.errors} goTo={goTo} />}
    </section>
  );
}

/** core-metadata's complaints as a list ("line 7: …"), then the text as sent with line
 * numbers and each complaint under its line (around the lines concerned, if it is long). */
function Invalid({ text, errors, goTo }: { text: string; errors: LineError[]; goTo: (n: number) => void }) {
  const lines = text.split(/\r?\n/);
  if (lines.length > 1 && lines[lines.length - 1] === "") lines.pop();
  const at = new Map<number, LineError[]>();
  for (const e of errors) if (e.line !== null) at.set(e.line, [...(at.get(e.line) ?? []), e]);
  const ranges = excerpt(lines.length, [...at.keys()]);
  return (
    <div class="invalid">
      <div role="alert">
        <p class="error">
          core-metadata refused the profile: {errors.length === 1 ? "1 problem" : `${errors.length} problems`}.
        </p>
        <ul class="problems">
          {errors.map((e, i) => (
            <li key={i} data-error-line={e.line ?? ""}>
              {e.line !== null ? (
                <>
                  <button type="button" class="link" onClick={() => goTo(e.line as number)}>
                    line {e.line}
                  </button>
                  : {e.message}
                </>
              ) : (
                e.message
              )}
            </li>
          ))}
        </ul>
      </div>
      <div class="yaml" tabIndex={0} role="region" aria-label="The profile as sent, with the problems at their lines">
        {ranges.map(([lo, hi], i) => (
          <Fragment key={lo}>
            {(i > 0 || lo > 1) && <p class="gap muted">…</p>}
            <ol start={lo}>
              {lines.slice(lo - 1, hi).map((l, j) => {
                const n = lo + j;
                const here = at.get(n);
                return (
                  <li key={n} data-line={n} class={here ? "bad" : undefined}>
                    <code>{l || " "}</code>
                    {here?.map((e, k) => (
                      <span class="line-error" key={k}>
                        {e.message}
                      </span>
                    ))}
                  </li>
                );
              })}
            </ol>
          </Fragment>
        ))}
        {ranges.length > 0 && ranges[ranges.length - 1][1] < lines.length && <p class="gap muted">…</p>}
      </div>
    </div>
  );
}
