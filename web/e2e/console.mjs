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
//   OUTPOST_SHOTS     where screenshots go
import assert from "node:assert/strict";
import { readFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { env, launch } from "./browser.mjs";

const require = createRequire(import.meta.url);
const base = env("OUTPOST_URL");
const admin = env("OUTPOST_ADMIN");
const [viewer, viewerPassword] = env("OUTPOST_VIEWER").split(":");
const device = env("OUTPOST_DEVICE");
const shots = env("OUTPOST_SHOTS");
mkdirSync(shots, { recursive: true });
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const browser = await launch();

const step = (what) => console.log(`· ${what}`);

/** axe-core on the page as it is; fails on serious or critical violations. (Run through
 * the DevTools protocol: the page's Content-Security-Policy allows no injected script.) */
async function scan(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" ")) }));
  });
  const bad = result.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(bad, [], `${name}: accessibility violations ${JSON.stringify(bad)}`);
}

async function login(page, user, password) {
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("button", { name: "Log out" }).waitFor();
}

async function flows(size, label) {
  const context = await browser.newContext({ viewport: size, ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const errors = [];
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
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
  await login(page, "admin", admin);
  for (const s of ["core-data", "core-metadata", "core-command", "device-virtual"]) {
    await page.locator(`tr[data-service="${s}"] .status.up`).waitFor();
  }
  await scan(page, "overview");
  await shot("overview");

  step(`${label}: the devices, searched`);
  await page.getByRole("link", { name: "Devices" }).click();
  await page.getByLabel("Search").fill(device);
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

  step(`${label}: logging out ends the session`);
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByRole("button", { name: "Log in" }).waitFor();

  step(`${label}: a viewer sees no write control, and a forged write is refused`);
  await login(page, viewer, viewerPassword);
  await page.goto(`${base}/ui/#/device/${encodeURIComponent(device)}`);
  await page.locator('details[data-command="WriteInt8Value"]').waitFor();
  for (const summary of await page.locator("details.command summary").all()) await summary.click();
  await page.getByRole("button", { name: "Read" }).first().waitFor();
  assert.equal(await page.getByRole("button", { name: "Write" }).count(), 0, "a viewer has no Write button");
  await scan(page, "device as a viewer");
  await shot("viewer");
  const forged = await page.evaluate(
    async ([base, user, password, device]) => {
      const t = await (
        await fetch(`${base}/api/v3/auth/login`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ username: user, password }),
        })
      ).json();
      const r = await fetch(`${base}/core-command/api/v3/device/name/${encodeURIComponent(device)}/WriteInt8Value`, {
        method: "PUT",
        headers: { authorization: `Bearer ${t.accessToken}`, "content-type": "application/json" },
        body: JSON.stringify({ Int8: "1", EnableRandomization_Int8: "false" }),
      });
      return r.status;
    },
    [base, viewer, viewerPassword, device],
  );
  assert.equal(forged, 403, "the API refuses a viewer's write");

  if (label === "desktop") {
    step(`${label}: a session ended elsewhere asks to log in again and comes back to the same page`);
    // The admin changes the viewer's password, which ends the viewer's tokens at once.
    const changed = await page.evaluate(
      async ([base, admin]) => {
        const t = await (
          await fetch(`${base}/api/v3/auth/login`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ username: "admin", password: admin }),
          })
        ).json();
        const r = await fetch(`${base}/api/v3/auth/user/vic/password`, {
          method: "PUT",
          headers: { authorization: `Bearer ${t.accessToken}`, "content-type": "application/json" },
          body: JSON.stringify({ password: "viewer password 2" }),
        });
        return r.status;
      },
      [base, admin],
    );
    assert.equal(changed, 204);
    // The next call the page makes is refused; the refresh too.
    await page.getByLabel("History").selectOption({ label: "1 hour" });
    await page.getByText("Your session has ended").waitFor();
    await shot("session-ended");
    await login(page, viewer, "viewer password 2");
    await page.getByRole("heading", { name: device }).waitFor();
  }
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByRole("button", { name: "Log in" }).waitFor();

  // The refused login (401) and the viewer's forged write (403) are the test's own.
  const unexpected = errors.filter((e) => !e.includes("401") && !e.includes("403"));
  assert.deepEqual(unexpected, [], `errors in the console; failed requests: ${failed.join("; ")}`);
  await context.close();
}

try {
  await flows({ width: 390, height: 844 }, "phone");
  await flows({ width: 1280, height: 800 }, "desktop");
  console.log("console flows passed");
} finally {
  await browser.close();
}
