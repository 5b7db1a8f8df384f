// The profiles page in the browser; run by console.mjs (which describes `t`) as the admin,
// at both sizes.
//
// device-virtual's example profiles are listed and one is viewed (its resources and
// commands, as core-metadata has them); profiles with mistakes are refused with each
// problem shown at its line; a good one, uploaded from a file, is listed, and uploading it
// again is refused as existing and offers to replace it, which changes it on the node.
import assert from "node:assert/strict";
import { api } from "../api.mjs";
import { waitForFocus } from "../browser.mjs";

/** core-metadata's profile `name`, as the API gives it to the admin; null if it has none. */
async function fetchProfile(t, name) {
  const [status, body] = await api(t, "GET", `/core-metadata/api/v3/deviceprofile/name/${encodeURIComponent(name)}`);
  return status === 200 ? body.profile : null;
}

export async function profiles(t) {
  const { page, label } = t;
  t.step("the profiles page lists device-virtual's profiles and its service");
  await page.getByRole("link", { name: "Profiles" }).click();
  await page.getByRole("heading", { name: "Profiles and device services", level: 1 }).waitFor();
  const row = page.locator('li[data-profile="Random-Integer-Device"]');
  await row.waitFor();
  const known = await fetchProfile(t, "Random-Integer-Device");
  assert.match(
    await row.locator("[data-counts]").textContent(),
    new RegExp(`^${known.deviceResources.length} resources · ${known.deviceCommands.length} commands · used by \\d+ devices?$`),
    "counted as core-metadata has them",
  );
  const service = page.locator('tr[data-service="device-virtual"]');
  await service.waitFor();
  assert.match(await service.locator("td").first().textContent(), /^https?:\/\//, "the service's address");
  await t.scan(page, "profiles");
  await t.shot("profiles");

  t.step("viewing a profile shows its resources and commands");
  await row.getByRole("button", { name: "Random-Integer-Device" }).click();
  const view = page.locator('[data-viewing="Random-Integer-Device"]');
  await view.getByRole("heading", { name: "Profile Random-Integer-Device" }).waitFor();
  const int8 = view.locator('tr[data-resource="Int8"] td');
  assert.equal(await int8.nth(0).textContent(), "Int8", "valueType");
  assert.equal(await int8.nth(1).textContent(), "read, write", "readWrite");
  assert.equal(
    await view.locator("tr[data-resource]").count(),
    known.deviceResources.length,
    "every resource is listed",
  );
  const write = view.locator('tr[data-command="WriteInt8Value"] td');
  assert.equal(await write.nth(0).textContent(), "write");
  assert.match(await write.nth(1).textContent(), /^Int8, EnableRandomization_Int8 \(default false\)$/);
  await t.scan(page, "a profile");
  await t.shot("profile");
  await view.getByRole("button", { name: "Close Random-Integer-Device" }).click();
  await view.waitFor({ state: "detached" });
  await waitForFocus(row.getByRole("button", { name: "Random-Integer-Device" }));

  // Refused on purpose below: profiles with mistakes (400), one that exists (409).
  t.allow(400, "/core-metadata/api/v3/deviceprofile/uploadfile");
  t.allow(409, "/core-metadata/api/v3/deviceprofile/uploadfile");
  const editor = page.getByLabel("Profile YAML");
  const upload = page.getByRole("button", { name: "Upload", exact: true });
  /** Sends `yaml` and waits for core-metadata's problems, each expected at its line. */
  const refused = async (yaml, expected) => {
    await editor.fill(yaml);
    await upload.click();
    // This text's problems (not those of the text sent before): its first line is listed.
    await page.waitForFunction(
      ([first]) => document.querySelector('.yaml li[data-line="1"] code')?.textContent === first,
      [yaml.split("\n")[0]],
    );
    const items = page.locator(".problems li");
    const shown = await items.evaluateAll((li) => li.map((l) => [l.dataset.errorLine, l.textContent]));
    assert.equal(shown.length, expected.length, `problems: ${JSON.stringify(shown)}`);
    for (const [i, [line, text]] of expected.entries()) {
      assert.equal(shown[i][0], String(line), `problem ${i} at line ${line}: ${JSON.stringify(shown)}`);
      assert.match(shown[i][1], new RegExp(`^line ${line}: `));
      assert.match(shown[i][1], text);
      // The listing marks that line, with the problem under it.
      const at = page.locator(`.yaml li.bad[data-line="${line}"]`);
      assert.equal(await at.locator("code").textContent(), yaml.split("\n")[line - 1]);
      assert.match(await at.locator(".line-error").allTextContents().then((a) => a.join(" ")), text);
    }
  };

  t.step("a profile badly indented is refused at the line of the mistake");
  await refused(
    [
      `name: "bad-indent-${label}"`,
      `manufacturer: "Outpost"`,
      `deviceResources:`,
      `  - name: "Level"`,
      `    properties:`,
      `      valueType: "Int8"`,
      `     readWrite: "R"`,
      ``,
    ].join("\n"),
    [[7, /did not find expected key/]],
  );
  await t.scan(page, "profile with a syntax error");
  await t.shot("profile-syntax-error");

  t.step("an unknown valueType is refused at its line");
  await refused(
    [
      `name: "bad-type-${label}"`,
      `deviceResources:`,
      `  - name: "Level"`,
      `    properties:`,
      `      valueType: "Int9"`,
      `      readWrite: "R"`,
      ``,
    ].join("\n"),
    [[5, /Int9/]],
  );

  t.step("a resource defined twice and a command naming a missing one, each at its line");
  await refused(
    [
      `name: "bad-refs-${label}"`,
      `deviceResources:`,
      `  - name: "Level"`,
      `    properties: { valueType: "Int8", readWrite: "RW" }`,
      `  - name: "Level"`,
      `    properties: { valueType: "Int16", readWrite: "R" }`,
      `deviceCommands:`,
      `  - name: "SetLevel"`,
      `    readWrite: "W"`,
      `    resourceOperations:`,
      `      - deviceResource: "Levle"`,
      ``,
    ].join("\n"),
    [
      [5, /deviceResource 'Level' is defined twice/],
      [11, /deviceCommand 'SetLevel' refers to unknown deviceResource 'Levle'/],
    ],
  );
  await t.scan(page, "profile with problems");
  await t.shot("profile-errors");

  t.step("a good profile from a file is added and listed");
  const name = `console-profile-${label}`;
  const good = (max) =>
    [
      `name: "${name}"`,
      `manufacturer: "Outpost"`,
      `model: "Console test"`,
      `description: "Uploaded by the console test"`,
      `deviceResources:`,
      `  - name: "Level"`,
      `    properties: { valueType: "Int16", readWrite: "RW", units: "mm", minimum: 0, maximum: ${max} }`,
      `deviceCommands:`,
      `  - name: "SetLevel"`,
      `    readWrite: "W"`,
      `    resourceOperations:`,
      `      - deviceResource: "Level"`,
      ``,
    ].join("\n");
  await page.getByLabel("Profile file").setInputFiles({
    name: `${name}.yaml`,
    mimeType: "application/yaml",
    buffer: Buffer.from(good(5000)),
  });
  // The file is read, then shown in the editor.
  await page.waitForFunction(([n]) => document.getElementById("profile-text")?.value.includes(n), [name]);
  assert.equal(await editor.inputValue(), good(5000), "the file is shown in the editor");
  await upload.click();
  await page.getByRole("status").filter({ hasText: `Profile ${name} added.` }).waitFor();
  assert.equal(await page.locator(".invalid").count(), 0, "no problem is left shown");
  const added = page.locator(`li[data-profile="${name}"]`);
  await added.waitFor();
  assert.equal((await fetchProfile(t, name))?.deviceResources[0].properties.maximum, 5000);

  t.step("uploading it again is refused as existing; replacing it changes it");
  await editor.fill(good(4000));
  await upload.click();
  const exists = page.getByRole("alert").filter({ hasText: `device profile '${name}' already exists` });
  await exists.waitFor();
  await t.scan(page, "profile that exists");
  await exists.getByRole("button", { name: `Replace ${name}` }).click();
  await page.getByRole("status").filter({ hasText: `Profile ${name} replaced.` }).waitFor();
  assert.equal((await fetchProfile(t, name))?.deviceResources[0].properties.maximum, 4000, "replaced on the node");
  await added.getByRole("button", { name }).click();
  const level = page.locator(`[data-viewing="${name}"] tr[data-resource="Level"] td`);
  await page.waitForFunction(
    ([n]) =>
      document.querySelector(`[data-viewing="${n}"] tr[data-resource="Level"] td:nth-of-type(5)`)?.textContent ===
      "4000",
    [name],
    { timeout: 35_000 },
  );
  assert.deepEqual(await level.allTextContents(), ["Int16", "read, write", "mm", "0", "4000", "–"]);
  await t.scan(page, "uploaded profile");
  await t.shot("profile-uploaded");
}
