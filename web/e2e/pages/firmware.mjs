// The firmware page in the browser; run by console.mjs (which describes `t`) as the admin,
// at both sizes.
//
// OUTPOST_FIRMWARE names a firmware file (artifact pump-fw 2.1, compatible with
// Random-Integer-Device) with its signature in OUTPOST_FIRMWARE.sig.json. Both sizes run on
// the same node: at the second, the artifact uploaded at the first is deleted through the
// page, then uploaded again.
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { api } from "../api.mjs";

const ARTIFACT = "pump-fw 2.1";

/** The artifacts the node has, as the page names them. */
async function artifactsOnNode(t) {
  const [status, body] = await api(t, "GET", "/ota/api/v3/artifact/all");
  assert.equal(status, 200, JSON.stringify(body));
  return body.artifacts.map((a) => `${a.manifest.name} ${a.manifest.version}`);
}

/** Opens a form's <details> (left open by an earlier run, it stays open). */
async function open(page, form) {
  const details = page.locator(`details[data-form="${form}"]`);
  if (!(await details.evaluate((d) => d.open))) await details.locator("summary").click();
}

/** Waits until rollout `name`'s card shows `state`, and checks that the node says so too. */
async function inState(t, name, state) {
  await t.page.locator(`li[data-rollout="${name}"][data-state="${state}"]`).waitFor();
  const [status, body] = await api(t, "GET", `/ota/api/v3/rollout/name/${encodeURIComponent(name)}`);
  assert.equal(status, 200, JSON.stringify(body));
  assert.equal(body.status.state, state, `${name} on the node`);
}

export async function firmware(t) {
  const { page, label } = t;
  const fw = process.env.OUTPOST_FIRMWARE;
  assert.ok(fw, "OUTPOST_FIRMWARE names the firmware file to upload");
  const sig = `${fw}.sig.json`;
  const uploads = [];
  const onRequest = (r) => {
    if (r.method() === "POST" && r.url().endsWith("/ota/api/v3/artifact")) uploads.push(r.url());
  };
  page.on("request", onRequest);
  try {
    t.step("the firmware page lists artifacts, rollouts and the inventory");
    await page.getByRole("link", { name: "Firmware" }).click();
    await page.getByRole("heading", { name: "Firmware", level: 1 }).waitFor();
    await page.getByRole("heading", { name: "Artifacts" }).waitFor();
    const inventoryRow = page.locator(`tr[data-device="${t.device}"]`);
    await inventoryRow.waitFor();
    assert.match(await inventoryRow.innerText(), /Random-Integer-Device/);
    // Nothing has polled for it: it never checked in.
    assert.equal(await inventoryRow.getAttribute("data-check-in"), "never");
    await page.getByText(/^(No artifact uploaded yet\.|\d+ artifacts?)$/).waitFor();

    const row = page.locator(`tr[data-artifact="${ARTIFACT}"]`);
    if ((await artifactsOnNode(t)).includes(ARTIFACT)) {
      t.step("the artifact uploaded before (at the other size) is deleted, after a confirmation in the page");
      await row.waitFor();
      await row.getByRole("button", { name: `Delete ${ARTIFACT}` }).click();
      const yes = row.getByRole("button", { name: `Yes, delete ${ARTIFACT}` });
      await yes.waitFor();
      await t.scan(page, "firmware: confirm a deletion");
      await t.shot("firmware-delete-confirm");
      await yes.click();
      await page.getByText(`Deleted ${ARTIFACT}.`).waitFor();
      await row.waitFor({ state: "detached" });
      assert.ok(!(await artifactsOnNode(t)).includes(ARTIFACT), "the artifact is gone from the node");
    }

    t.step("the signature file names the artifact; a file that is not the signed one is refused before sending");
    await open(page, "upload");
    const upload = page.getByRole("form", { name: "Upload an artifact" });
    await upload.getByLabel("Signature file (.sig.json)").setInputFiles(sig);
    await upload.getByText(/Signed: pump-fw 2\.1, 64 KiB, for Random-Integer-Device/).waitFor();
    // The signature file chosen as the firmware by mistake.
    await upload.getByLabel("Firmware file").setInputFiles(sig);
    await upload.getByRole("button", { name: "Upload" }).click();
    const refused = upload.getByRole("alert");
    await refused.waitFor();
    const sigSize = statSync(sig).size;
    assert.match(
      await refused.innerText(),
      new RegExp(`is not the file signed as pump-fw 2\\.1: it has ${sigSize} B .*65536 bytes`),
    );
    assert.equal(uploads.length, 0, "nothing was sent");
    await t.scan(page, "firmware: a wrong file refused");
    await t.shot("firmware-wrong-file");

    t.step("the signed firmware uploads and is listed");
    await upload.getByLabel("Firmware file").setInputFiles(fw);
    await upload.getByRole("button", { name: "Upload" }).click();
    await upload.getByText(/^Uploaded pump-fw 2\.1 \(64 KiB\), signed by key [0-9a-f]+\.$/).waitFor();
    assert.equal(uploads.length, 1, "one upload");
    await row.waitFor();
    const cells = await row.innerText();
    assert.match(cells, /64 KiB/);
    assert.match(cells, /Random-Integer-Device/);
    assert.ok((await artifactsOnNode(t)).includes(ARTIFACT), "the node has the artifact");
    await t.scan(page, "firmware: uploaded");
    await t.shot("firmware-uploaded");

    t.step("a rollout of it to the device");
    // Per size, and per run, so a flow run again on the same node makes its own.
    const name = `pump-${label}-${Date.now().toString(36)}`;
    await open(page, "rollout");
    const form = page.getByRole("form", { name: "New rollout" });
    await form.getByLabel("Rollout name").fill(name);
    await form.getByLabel("Artifact").selectOption({ label: ARTIFACT });
    await form.getByLabel("Devices by name").check();
    await form.getByLabel(t.device, { exact: true }).check();
    await form.getByLabel("Phases (cumulative % of the devices)").fill("50, 100");
    await form.getByRole("button", { name: "Create rollout" }).click();
    await form.getByText(`Created rollout ${name} of ${ARTIFACT} to 1 device.`).waitFor();
    const card = page.locator(`li[data-rollout="${name}"]`);
    await inState(t, name, "running");
    // One device: it is the first phase's, offered the update, not started.
    assert.match(await card.innerText(), /Phase 1[\s\S]*0 of 1 done, 1 pending/);
    await t.scan(page, "firmware: a rollout running");
    await t.shot("firmware-rollout-running");

    t.step("pausing it pauses it on the node");
    await card.getByRole("button", { name: `Pause ${name}` }).click();
    await inState(t, name, "paused");
    assert.equal(await card.getByRole("button", { name: `Pause ${name}` }).count(), 0, "no pause when paused");
    await card.getByText("paused by an operator").waitFor();
    await t.scan(page, "firmware: a rollout paused");
    await t.shot("firmware-rollout-paused");

    t.step("resuming it runs it again");
    await card.getByRole("button", { name: `Resume ${name}` }).click();
    await inState(t, name, "running");

    t.step("canceling it, after a confirmation, ends it");
    await card.getByRole("button", { name: `Cancel ${name}` }).click();
    const yes = card.getByRole("button", { name: `Yes, cancel ${name}` });
    await yes.waitFor();
    await t.scan(page, "firmware: confirm a cancel");
    await yes.click();
    await inState(t, name, "canceled");
    assert.match(await card.innerText(), /0 of 1 done, 1 canceled/);
    assert.equal(await card.getByRole("button").count(), 0, "an ended rollout has no action");
    await t.scan(page, "firmware: a rollout canceled");
    await t.shot("firmware-rollout-canceled");
  } finally {
    page.off("request", onRequest);
  }
}
