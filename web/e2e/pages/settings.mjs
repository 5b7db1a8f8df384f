// A device's settings in the browser: labels and autoEvents changed through the page and
// seen on the node, an interval refused before it is sent, a secret shown once, and
// revoking (which locks the device). Run by console.mjs as the admin, at both sizes, on
// the spare device (`t.spare`).
import assert from "node:assert/strict";
import { api } from "../api.mjs";
import { waitForFocus } from "../browser.mjs";

const device = (t) => api(t, "GET", `/core-metadata/api/v3/device/name/${encodeURIComponent(t.spare)}`);

export async function settings(t) {
  const { page } = t;
  t.step("a device's settings: labels");
  await page.goto(`${t.base}/ui/#/device/${encodeURIComponent(t.spare)}`);
  await page.getByRole("heading", { name: "Settings" }).waitFor();
  const labels = page.locator('form[data-setting="labels"]');
  const label = `hall-${t.label}`;
  await labels.getByLabel(/^Labels/).fill(`pump, ${label} pump`);
  await labels.getByRole("button", { name: "Save labels" }).click();
  await labels.getByText("labels saved").waitFor();
  let [code, d] = await device(t);
  assert.equal(code, 200);
  assert.deepEqual(d.device.labels, ["pump", label]);

  t.step("a device's settings: an autoEvent, its interval checked before it is sent");
  const ae = page.locator('[data-setting="autoevents"]');
  await ae.getByLabel("Read", { exact: true }).selectOption("Int16");
  await ae.getByLabel(/^Every/).fill("10 seconds");
  await ae.getByRole("button", { name: "Add autoEvent" }).click();
  await ae.getByText("is not a duration").waitFor();
  await ae.getByLabel(/^Every/).fill("2s");
  await ae.getByRole("button", { name: "Add autoEvent" }).click();
  await ae.locator('tr[data-autoevent="Int16"]').waitFor();
  [code, d] = await device(t);
  assert.deepEqual(
    d.device.autoEvents.map((a) => [a.sourceName, a.interval]),
    [["Int16", "2s"]],
  );
  await t.scan(page, "device settings");
  await t.shot("settings");
  await ae.getByRole("button", { name: /^Remove the autoEvent/ }).click();
  await ae.locator('tr[data-autoevent="Int16"]').waitFor({ state: "detached" });
  [code, d] = await device(t);
  assert.deepEqual(d.device.autoEvents ?? [], []);

  t.step("a device's credentials: a secret shown once");
  const cred = page.locator('[data-setting="credentials"]');
  await cred.getByRole("button", { name: /^(Enroll with a secret|Rotate secret)$/ }).click();
  const shown = cred.locator("[data-secret]");
  await shown.waitFor();
  const secret = (await shown.textContent())?.trim() ?? "";
  assert.ok(secret.length >= 16, `a secret is shown (${secret.length} characters)`);
  await cred.locator('[data-credential="secret"]').waitFor();
  await t.shot("secret-once");
  await cred.getByRole("button", { name: "I have kept it" }).click();
  await cred.locator("[data-secret-shown]").waitFor({ state: "detached" });
  assert.ok(!(await page.content()).includes(secret), "the secret is gone from the page");
  // Back on the button that made it.
  await waitForFocus(cred.getByRole("button", { name: "Rotate secret" }));

  if (t.label === "desktop") {
    t.step("a device's credentials: revoked, and locked with them");
    await cred.getByRole("button", { name: "Revoke…" }).click();
    await waitForFocus(cred.getByRole("button", { name: `Revoke ${t.spare}` }));
    await cred.getByRole("button", { name: `Revoke ${t.spare}` }).click();
    await cred.getByText("revoked", { exact: true }).waitFor();
    // The question gone, the focus is back on the button that asked it.
    await waitForFocus(cred.getByRole("button", { name: "Revoke…" }));
    [code, d] = await device(t);
    assert.equal(d.device.adminState, "LOCKED");
    await page.locator('[data-setting="state"]').getByRole("button", { name: "Unlock" }).waitFor();
    [code, d] = await api(t, "GET", `/core-metadata/api/v3/device/name/${encodeURIComponent(t.spare)}/credential`);
    assert.equal(d.secret, false, `no secret after revoking: ${JSON.stringify(d)}`);
  }
}
