// The data page, then the overview's summary, in the browser; run by console.mjs (which
// describes `t`) as the admin, at both sizes.
//
// The node runs rules with the pipeline "console-int8" on console-1's Int8 (a reading every
// second) and export with the webhook destination "historian" at an address nobody
// listens on, so its queue grows and its link stays down.
import assert from "node:assert/strict";
import { api } from "../api.mjs";

export async function data(t) {
  const { page } = t;

  t.step("rules & export: the pipeline console-int8 counts the readings it takes");
  await page.getByRole("link", { name: "Rules & export", exact: true }).click();
  await page.getByRole("heading", { name: "Rules and export", level: 1 }).waitFor();
  const pipeline = page.locator('[data-pipeline="console-int8"]');
  await pipeline.getByRole("heading", { name: "console-int8" }).waitFor();
  await pipeline.getByText("5 s windows: min, max, count").waitFor();
  await pipeline.getByText("above 200 (warning): Int8 out of its range").waitFor();
  const count = async (what) => Number(await pipeline.locator(`[data-count="${what}"]`).getAttribute("data-value"));
  const before = await count("readingsIn");
  // Polled every 3 s, a reading a second: the count shown goes up.
  await page.waitForFunction(
    ([n]) => Number(document.querySelector('[data-pipeline="console-int8"] [data-count="readingsIn"]')?.getAttribute("data-value")) >= n + 2,
    [before],
    { timeout: 20_000 },
  );
  // A rate once two polls were seen, and the node agrees with what is shown.
  await pipeline.locator('[data-count="readingsIn"]').getByText(/\d(\.\d)?\/s/).waitFor({ timeout: 10_000 });
  const shown = await count("readingsIn");
  const [code, p] = await api(t, "GET", "/rules/api/v3/pipeline/name/console-int8");
  assert.equal(code, 200);
  assert.ok(p.readingsIn >= shown, `the node counted ${p.readingsIn} in, the page shows ${shown}`);
  assert.ok(p.alerts >= (await count("alerts")), "alerts as the node counts them");

  t.step("rules & export: historian's queue grows while its webhook is unreachable");
  const dest = page.locator('[data-destination="historian"]');
  await dest.getByRole("heading", { name: /historian/ }).waitFor();
  await page.waitForFunction(
    () => Number(document.querySelector('[data-destination="historian"] [data-queue-items]')?.getAttribute("data-queue-items")) > 0,
    null,
    { timeout: 20_000 },
  );
  await dest.locator('[data-link="down"]').getByText(/^Down: \d+ failed attempts? in a row$/).waitFor({ timeout: 20_000 });
  await dest.getByText(/^queued \d+ (s|min) ago$/).waitFor();
  const oldest = Number(await dest.locator("[data-oldest-ms]").getAttribute("data-oldest-ms"));
  assert.ok(oldest > 0, `an oldest-item age (${oldest} ms)`);
  await dest.getByText("http://127.0.0.1:1/historian", { exact: true }).waitFor();
  await dest.getByRole("meter").waitFor();
  const [, status] = await api(t, "GET", "/export/api/v3/export/status");
  const h = status.destinations.find((d) => d.name === "historian");
  assert.ok(h.queue.items > 0 && !h.sender.connected && h.sender.consecutiveFailures > 0, JSON.stringify(h.sender));
  // Nothing was refused for good (the receiver never answered): no dead letters, and so
  // nothing to queue again.
  await dest.locator('[data-dead="0"]').getByText("No dead letters.").waitFor();
  assert.equal(await dest.getByRole("button", { name: /Queue again/ }).count(), 0);
  await t.scan(page, "rules and export");
  await t.shot("data");

  t.step("overview: a notification raised on the node is listed with its severity and category");
  const content = `Console check of the overview (${t.label})`;
  const [added, body] = await api(t, "POST", "/support-notifications/api/v3/notification", [
    { apiVersion: "v3", notification: { category: "console-check", content, sender: "console-e2e", severity: "CRITICAL" } },
  ]);
  assert.equal(added, 207, JSON.stringify(body));
  assert.equal(body[0].statusCode, 201, JSON.stringify(body));

  t.step("overview: an ingest rate, storage, historian in the export summary, versions");
  await page.getByRole("link", { name: "Overview", exact: true }).click();
  await page.getByRole("heading", { name: "Overview", level: 1 }).waitFor();
  // The rate needs two polls 5 s apart.
  await page.waitForFunction(
    () => Number(document.querySelector("[data-ingest-rate]")?.getAttribute("data-ingest-rate") || "0") > 0,
    null,
    { timeout: 20_000 },
  );
  await page.locator('[data-card="ingest"]').getByText(/^\d[\d.,]* readings\/s$/).waitFor();
  await page.locator('[data-card="storage"]').getByText(/^[\d,]+ readings$/).waitFor();
  await page.locator('[data-card="storage"]').getByText(/readings the oldest go/).waitFor();
  const exp = page.locator('[data-card="export"] [data-destination="historian"]');
  await exp.locator('[data-link="down"]').waitFor({ timeout: 10_000 });
  await exp.getByText(/\d+ queued/).waitFor();
  await page.locator('[data-card="alerts"]').getByText(/rules alerts?$/).waitFor();
  await page.locator('tr[data-service="core-data"] .status.up').waitFor();
  await page.waitForFunction(
    () => /^\d+\.\d+/.test(document.querySelector('[data-version="core-data"]')?.textContent ?? ""),
    null,
    { timeout: 10_000 },
  );
  const versions = await page.locator("tr:has(.status.up) [data-version]").allTextContents();
  assert.ok(versions.length >= 8, `services up: ${versions.length}`);
  for (const v of versions) assert.match(v, /^\d+\.\d+/, "every service that is up says its version");
  await page.locator('tr[data-service="core-data"] [data-uptime]').getByText(/^\d[\d.]* (s|min|h)$/).waitFor();
  await page.locator('[data-card="storage"]').getByText(/[\d.]+ (KiB|MiB|GiB) on disk/).waitFor();
  const note = page.getByRole("region", { name: "Recent notifications" }).getByRole("row").filter({ hasText: content });
  await note.getByRole("cell", { name: "CRITICAL", exact: true }).waitFor();
  await note.getByRole("cell", { name: "console-check", exact: true }).waitFor();
  await note.getByText(/^\d+ (s|min) ago$/).waitFor();

  t.step("overview: a device added elsewhere shows among the live node events");
  await page.locator('[data-node-live="live"]').waitFor({ timeout: 15_000 });
  const name = `event-${t.label}`;
  const [made, answer] = await api(t, "POST", "/core-metadata/api/v3/device", [
    {
      apiVersion: "v3",
      device: {
        name,
        profileName: "Random-Integer-Device",
        serviceName: "device-virtual",
        adminState: "LOCKED",
        operatingState: "UP",
        protocols: { other: {} },
      },
    },
  ]);
  assert.equal(made, 207, JSON.stringify(answer));
  assert.equal(answer[0].statusCode, 201, JSON.stringify(answer));
  await page
    .locator('[data-node-event="system"]')
    .filter({ hasText: `device ${name} added by core-metadata` })
    .waitFor({ timeout: 15_000 });
  await t.scan(page, "overview with its summary");
  await t.shot("overview-summary");
}
