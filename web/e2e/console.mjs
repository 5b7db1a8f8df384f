// The console in a real browser (Debian's chromium through playwright-core) against a
// running node: log in, the overview, a device's live chart, a write command and its
// bounds, a viewer who sees no write control and whose forged write is refused, logging
// out; at phone size (390×844) and desktop size, with screenshots and an axe-core scan of
// every page (no serious or critical violation).
//
// Run by tests/e2e/console.rs, which starts the node and passes:
//   OUTPOST_URL       the gateway, https://127.0.0.1:<port>
//   OUTPOST_ADMIN     the admin's password
//   OUTPOST_VIEWER    "<user>:<password>" of a viewer
//   OUTPOST_DEVICE    a device-virtual device whose Int8 is read every second
//   OUTPOST_SPARE     a device-virtual device whose settings may change
//   OUTPOST_SHOTS     where screenshots go
//   OUTPOST_FIRMWARE  a firmware file to upload as an artifact, signed in <file>.sig.json
//   OUTPOST_METADATA_PID  core-metadata's process, which the stale flow pauses
// and, to try some pages alone: OUTPOST_ONLY=firmware,access runs the login and those
// pages' flows, at desktop size; with `main` in the list, the main flows run too, at both
// sizes, with only the pages listed.
import assert from "node:assert/strict";
import { readFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { api } from "./api.mjs";
import { env, launch, logInAs, waitForFocus } from "./browser.mjs";
import { profiles } from "./pages/profiles.mjs";
import { data } from "./pages/data.mjs";
import { firmware } from "./pages/firmware.mjs";
import { access } from "./pages/access.mjs";
import { settings } from "./pages/settings.mjs";
import { stale } from "./pages/stale.mjs";

const require = createRequire(import.meta.url);
const base = env("OUTPOST_URL");
const admin = env("OUTPOST_ADMIN");
const [viewer, viewerPassword] = env("OUTPOST_VIEWER").split(":");
const device = env("OUTPOST_DEVICE");
const shots = env("OUTPOST_SHOTS");
mkdirSync(shots, { recursive: true });
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const pages = { settings, profiles, data, firmware, access, stale };
const only = process.env.OUTPOST_ONLY?.split(",").filter((p) => p);
const alone = only !== undefined && !only.includes("main");
const browser = await launch();

const step = (what) => console.log(`· ${what}`);

/** axe-core on the page as it is; fails on serious or critical violations. (Run through
 * the DevTools protocol: the page's Content-Security-Policy allows no injected script.)
 * Fails too when the page is wider than the window: on a phone it would scroll sideways. */
async function scan(page, name) {
  const sideways = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(sideways <= 0, `${name}: the page is ${sideways} px wider than the window`);
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" ")) }));
  });
  const bad = result.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(bad, [], `${name}: accessibility violations ${JSON.stringify(bad)}`);
}

async function flows(size, label) {
  const context = await browser.newContext({ viewport: size, ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const errors = [];
  page.on("console", (m) => {
    // A failed request's line names its status; its location is the request's URL.
    if (m.type() === "error") errors.push({ text: m.text(), url: m.location()?.url ?? "" });
  });
  // Which requests failed, to say so beside the console's own line.
  const failed = [];
  page.on("response", (r) => {
    if (r.status() >= 400) failed.push(`${r.status()} ${r.request().method()} ${r.url()}`);
  });
  const shot = (name) => page.screenshot({ path: `${shots}/${label}-${name}.png`, fullPage: true });

  step(`${label}: the login page, a wrong password`);
  await page.goto(`${base}/ui/`);
  await scan(page, "login");
  await page.getByLabel("User name").fill("admin");
  await page.getByLabel("Password").fill("not-the-password");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("alert").waitFor();
  await shot("login-refused");

  step(`${label}: logging in, the overview lists the services`);
  await logInAs(page, "admin", admin);
  const spare = env("OUTPOST_SPARE");
  // Requests a flow makes to be refused (status, a part of the URL): their console lines
  // are expected.
  const allowed = [];
  const allow = (status, part) => allowed.push([String(status), part]);
  /** What the page flows (web/e2e/pages/) are given: the page, logged in as the admin; the
   * node's address and the admin's password; the size's label ("phone", "desktop"); the
   * fast device and the spare one; step(what) to say what is checked, scan(page, name) and
   * shot(name) as here, allow(status, urlPart) for requests the flow expects refused. */
  const t = { page, base, label, admin, device, spare, step: (w) => step(`${label}: ${w}`), scan, shot, allow };
  if (alone) {
    for (const name of only) await pages[name](t);
    await context.close();
    return;
  }
  for (const s of ["core-data", "core-metadata", "core-command", "device-virtual"]) {
    await page.locator(`tr[data-service="${s}"] .status.up`).waitFor();
  }
  await scan(page, "overview");
  await shot("overview");

  step(`${label}: the devices, searched`);
  await page.getByRole("link", { name: "Devices" }).click();
  await page.getByLabel("Search").fill(device);
  // When it was last heard from: its newest reading in core-data, seconds ago.
  await page.locator(`[data-last-seen="${device}"]`).getByText(/^Last reading \d+ s ago$/).waitFor();
  await page.getByRole("link", { name: device }).click();
  await page.getByRole("heading", { name: device }).waitFor();

  step(`${label}: the chart gains points as readings arrive`);
  const latest = page.locator('[data-latest="Int8"]');
  await page.locator('[data-live="live"]').waitFor({ timeout: 15_000 });
  const points = async () => Number((await latest.getAttribute("data-points")) ?? "0");
  const before = await points();
  await page.waitForFunction(
    ([n]) => Number(document.querySelector('[data-latest="Int8"]')?.getAttribute("data-points") ?? 0) >= n + 2,
    [before],
    { timeout: 15_000 },
  );
  // Drawn, not only held: the chart's canvas has the line and axes on it.
  const inked = await page.evaluate(() => {
    const c = document.querySelector('[data-chart="Int8"] canvas');
    if (!(c instanceof HTMLCanvasElement)) return 0;
    const d = c.getContext("2d")?.getImageData(0, 0, c.width, c.height).data ?? [];
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return n;
  });
  assert.ok(inked > 1000, `the chart is drawn (${inked} pixels inked)`);
  // The profile's resources, each with its type and latest reading.
  await page.getByRole("heading", { name: /^Resources/ }).click();
  const int8 = page.locator('tr[data-resource="Int8"]');
  await int8.getByRole("cell", { name: "Int8", exact: true }).waitFor();
  assert.match((await int8.locator("td").last().textContent()) ?? "", /^-?\d+$/, "Int8's latest reading is shown");
  await scan(page, "device");
  await shot("device");
  await page.screenshot({ path: `${shots}/${label}-device-top.png` });
  await page.locator('[data-chart="Int8"]').screenshot({ path: `${shots}/${label}-chart.png` });

  step(`${label}: a value out of range is refused before it is sent`);
  await page.locator('details[data-command="WriteInt8Value"] summary').click();
  const form = page.locator('details[data-command="WriteInt8Value"] form');
  await form.getByLabel(/^Int8/).fill("300");
  await form.getByLabel(/^EnableRandomization_Int8/).fill("false");
  await form.getByRole("button", { name: "Write" }).click();
  await form.getByText("Int8 holds -128 to 127").waitFor();
  // Forced past the page, the API refuses it too, and says why.
  allow(400, "/WriteInt8Value");
  const [forcedStatus, forcedBody] = await api(
    { page, base, admin },
    "PUT",
    `/core-command/api/v3/device/name/${encodeURIComponent(device)}/WriteInt8Value`,
    { Int8: "300", EnableRandomization_Int8: "false" },
  );
  assert.ok(forcedStatus >= 400 && forcedStatus < 500, `an out-of-range write is refused: ${forcedStatus}`);
  assert.match(JSON.stringify(forcedBody), /Int8|range|300/, "the refusal names the problem");

  step(`${label}: a write changes what the next readings show`);
  const value = label === "phone" ? "42" : "-17";
  await form.getByLabel(/^Int8/).fill(value);
  await form.getByRole("button", { name: "Write" }).click();
  await form.getByText("written").waitFor();
  await page.waitForFunction(
    ([v]) => document.querySelector('[data-latest="Int8"]')?.getAttribute("data-value") === v,
    [value],
    { timeout: 15_000 },
  );
  await shot("written");

  // The other pages, each with its own flows (web/e2e/pages/), as the admin.
  for (const [name, flow] of Object.entries(pages)) {
    if (only && !only.includes(name)) continue;
    await page.getByRole("button", { name: "Log out" }).waitFor();
    await flow(t);
  }

  step(`${label}: logging out ends the session`);
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByRole("button", { name: "Log in" }).waitFor();

  step(`${label}: a viewer sees no write control, and a forged write is refused`);
  await logInAs(page, viewer, viewerPassword);
  await page.goto(`${base}/ui/#/device/${encodeURIComponent(device)}`);
  await page.locator('details[data-command="WriteInt8Value"]').waitFor();
  for (const summary of await page.locator("details.command summary").all()) await summary.click();
  await page.getByRole("button", { name: "Read" }).first().waitFor();
  assert.equal(await page.getByRole("button", { name: "Write" }).count(), 0, "a viewer has no Write button");
  await page.getByRole("heading", { name: "Settings" }).waitFor();
  for (const name of ["Save labels", "Add autoEvent", "Lock", "Rotate secret", "Enroll with a secret", "Revoke…"]) {
    assert.equal(await page.getByRole("button", { name }).count(), 0, `a viewer has no ${name} button`);
  }
  await scan(page, "device as a viewer");
  await shot("viewer");
  const [forged] = await api(
    t,
    "PUT",
    `/core-command/api/v3/device/name/${encodeURIComponent(device)}/WriteInt8Value`,
    { Int8: "1", EnableRandomization_Int8: "false" },
    viewer,
    viewerPassword,
  );
  assert.equal(forged, 403, "the API refuses a viewer's write");

  step(`${label}: a viewer sees the other pages without their write controls`);
  assert.equal(await page.getByRole("link", { name: "Access" }).count(), 0, "a viewer has no Access link");
  // Each page with what shows it has loaded (so an absent control is absent, not late),
  // and the controls only writers get.
  const readOnly = [
    ["Profiles", "Random-Integer-Device", [/^Upload/, /^Replace/]],
    ["Rules & export", "console-int8", [/^Queue again/]],
    ["Firmware", "pump-fw", [/^Upload/, /^Create rollout/, /^Delete/, /^Pause/, /^Resume/, /^Cancel/]],
  ];
  for (const [link, loaded, controls] of readOnly) {
    await page.getByRole("link", { name: link, exact: true }).click();
    await page.getByText(loaded).first().waitFor();
    for (const name of controls) {
      assert.equal(await page.getByRole("button", { name }).count(), 0, `a viewer has no ${name} button on ${link}`);
    }
    await scan(page, `${link} as a viewer`);
  }
  await page.goto(`${base}/ui/#/device/${encodeURIComponent(device)}`);
  await page.getByRole("heading", { name: device }).waitFor();

  if (label === "desktop") {
    step(`${label}: a session ended elsewhere asks to log in again and comes back to the same page`);
    // A window chosen while the session stands.
    await page.getByLabel("History").focus();
    await page.getByLabel("History").selectOption({ label: "1 hour" });
    // The admin changes the viewer's password, which ends the viewer's tokens at once.
    const [changed] = await api(t, "PUT", `/api/v3/auth/user/${encodeURIComponent(viewer)}/password`, {
      password: "viewer password 2",
    });
    assert.equal(changed, 204);
    // The next call the page makes is refused, the refresh too: the one a person's next
    // choice makes, unless one of the page's own came first (the dialog is then already
    // over the page, which takes no input).
    let chosen = "3600";
    try {
      await page.getByLabel("History").selectOption({ label: "24 hours" }, { timeout: 5_000 });
      chosen = "86400";
    } catch {
      // The page had called first.
    }
    await page.getByText("Your session has ended").waitFor();
    await shot("session-ended");
    // Logging in again over the page: what was chosen there is still chosen, and the
    // chart goes on taking live readings.
    await page.getByRole("dialog").waitFor();
    await logInAs(page, viewer, "viewer password 2");
    await page.getByRole("dialog").waitFor({ state: "detached" });
    assert.equal(await page.getByLabel("History").inputValue(), chosen, "the window chosen is kept");
    await waitForFocus(page.getByLabel("History"));
    const kept = await points();
    await page.waitForFunction(
      ([n]) => Number(document.querySelector('[data-latest="Int8"]')?.getAttribute("data-points") ?? 0) >= n + 2,
      [kept],
      { timeout: 15_000 },
    );
  }
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByRole("button", { name: "Log in" }).waitFor();

  // The refused login (401) and the viewer's forged write (403) are the test's own.
  const expected = (e) =>
    e.text.includes("401") ||
    e.text.includes("403") ||
    allowed.some(([status, part]) => e.text.includes(status) && e.url.includes(part));
  const unexpected = errors.filter((e) => !expected(e)).map((e) => `${e.text} (${e.url})`);
  assert.deepEqual(unexpected, [], `errors in the console; failed requests: ${failed.join("; ")}`);
  await context.close();
}

try {
  if (!alone) await flows({ width: 390, height: 844 }, "phone");
  await flows({ width: 1280, height: 800 }, "desktop");
  console.log("console flows passed");
} finally {
  await browser.close();
}
