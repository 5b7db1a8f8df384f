// The access page in the browser; run by console.mjs (which describes `t`) as the admin,
// at both sizes.
//
// An operator is added (a too-short password refused in place first), logs in with the
// role given, has their password changed (the old one then refused) and, logged in with it
// in a browser of their own, is told the page is for administrators; an API key is made,
// shown once, works, is revoked and is then refused; the last admin cannot be removed (the
// gateway's message shown); the operator is removed and can no longer log in.
import assert from "node:assert/strict";
import { login, request } from "../api.mjs";
import { logInAs, waitForFocus } from "../browser.mjs";

/** Who a token or an API key (its headers) is to the gateway: [status, whoami]. */
const whoami = (t, headers) => request(t, "GET", "/api/v3/auth/whoami", { headers });

export async function access(t) {
  const { page, label } = t;
  const user = `op-${label}`;
  const keyName = `key-${label}`;

  t.step("the access page lists the users and explains the roles");
  await page.getByRole("link", { name: "Access" }).click();
  await page.getByRole("heading", { name: "Access", level: 1 }).waitFor();
  await page.locator('tr[data-user="admin"] td[data-role="admin"]').waitFor();
  await page.locator('tr[data-user="vic"] td[data-role="viewer"]').waitFor();
  assert.deepEqual(await page.locator(".roles dt").allTextContents(), ["viewer", "operator", "admin"]);
  await t.scan(page, "access");
  await t.shot("access");

  t.step("a too-short password is refused in the page");
  const add = page.locator('form[aria-labelledby="add-user-h"]');
  await add.getByLabel("User name").fill(user);
  await add.getByLabel("Role").selectOption("operator");
  await add.getByLabel(/^Password/).fill("too short");
  await add.getByLabel("Repeat the password").fill("too short");
  await add.getByRole("button", { name: "Add user" }).click();
  await add.getByRole("alert").filter({ hasText: "a password needs at least 12 characters (this one has 9)" }).waitFor();
  assert.equal((await login(t, user, "too short"))[0], 401, "no such user was made");

  t.step("adding an operator, who logs in as one");
  await add.getByLabel(/^Password/).fill("operator password 1");
  await add.getByLabel("Repeat the password").fill("operator password 1");
  await add.getByRole("button", { name: "Add user" }).click();
  await add.getByRole("status").filter({ hasText: `${user} added as operator.` }).waitFor();
  const row = page.locator(`tr[data-user="${user}"]`);
  await row.locator('td[data-role="operator"]').waitFor();
  const [firstStatus, first] = await login(t, user, "operator password 1");
  assert.equal(firstStatus, 200);
  assert.equal(first.role, "operator", "the role given");
  await t.scan(page, "access with a user added");

  t.step("changing the operator's password: the new one works, the old one is refused");
  await row.getByRole("button", { name: `Change password of ${user}` }).click();
  const change = page.locator(`form[data-password-for="${user}"]`);
  await change.getByLabel(/^Password/).fill("operator password 2");
  await change.getByLabel("Repeat the password").fill("operator password 2");
  await change.getByRole("button", { name: "Change password", exact: true }).click();
  await change.getByRole("status").filter({ hasText: `The password of ${user} is changed` }).waitFor();
  await t.shot("access-password");
  assert.equal((await login(t, user, "operator password 1"))[0], 401, "the old password");
  const [secondStatus, second] = await login(t, user, "operator password 2");
  assert.equal(secondStatus, 200, "the new password");
  assert.equal(second.role, "operator");
  // Changing the password ended the sessions it had.
  const [before] = await whoami(t, { authorization: `Bearer ${first.accessToken}` });
  assert.equal(before, 401, "a token from before the change");
  await change.getByRole("button", { name: "Close" }).click();
  await waitForFocus(row.getByRole("button", { name: `Change password of ${user}` }));

  t.step("the operator, logged in in a browser of their own, is told the page is for administrators");
  const own = await page.context().browser().newContext({ ignoreHTTPSErrors: true, viewport: page.viewportSize() });
  try {
    const p = await own.newPage();
    await p.goto(`${t.base}/ui/#/access`);
    await logInAs(p, user, "operator password 2");
    await p.getByText(`${user} (operator)`).waitFor();
    await p.getByText("This page is for administrators").waitFor();
    assert.equal(await p.getByRole("navigation").getByRole("link", { name: "Access" }).count(), 0, "no Access link");
    assert.equal(await p.locator("table.users").count(), 0, "no users shown");
    await t.scan(p, "access as an operator");
    await p.screenshot({ path: `${process.env.OUTPOST_SHOTS}/${label}-access-operator.png`, fullPage: true });
  } finally {
    await own.close();
  }

  t.step("an API key is shown once, works, and is refused once revoked");
  const makeKey = page.locator('form[aria-labelledby="add-key-h"]');
  await makeKey.getByLabel("Name").fill(keyName);
  await makeKey.getByLabel("Role").selectOption("operator");
  await makeKey.getByRole("button", { name: "Make key" }).click();
  const once = page.locator("[data-secret-shown]");
  await once.waitFor();
  assert.match(await once.textContent(), /It will not be shown again/);
  const key = await once.locator("[data-secret]").textContent();
  assert.match(key, /^opk_[0-9a-f]+_\S+$/);
  const keyRow = page.locator(`tr[data-key="${keyName}"]`);
  await keyRow.locator('td[data-state="active"]').waitFor();
  assert.equal(await keyRow.locator("td").first().textContent(), "operator");
  assert.match(await keyRow.locator("td").nth(1).textContent(), / by admin$/);
  await once.getByRole("button", { name: "Copy the key" }).click();
  await once.getByText(/^(Copied\.|The browser did not allow copying)/).waitFor();
  await t.scan(page, "access with a new key");
  await t.shot("access-key");
  const [whoStatus, who] = await whoami(t, { "x-api-key": key });
  assert.equal(whoStatus, 200, "the key works");
  assert.deepEqual([who.name, who.role], [keyName, "operator"]);
  const [devices] = await request(t, "GET", "/core-metadata/api/v3/device/all", { headers: { "x-api-key": key } });
  assert.equal(devices, 200);
  await once.getByRole("button", { name: "I have kept it" }).click();
  await once.waitFor({ state: "detached" });
  assert.ok(!(await page.content()).includes(key), "the key is shown no more");
  await waitForFocus(makeKey.getByRole("button", { name: "Make key" }));

  await keyRow.getByRole("button", { name: `Revoke ${keyName}` }).click();
  await keyRow.getByRole("button", { name: `Revoke ${keyName}`, exact: true }).click();
  await keyRow.locator('td[data-state="revoked"]').waitFor();
  const [refused] = await whoami(t, { "x-api-key": key });
  assert.equal(refused, 401, "a revoked key is refused");

  t.step("the last admin cannot be removed");
  t.allow(409, "/api/v3/auth/user/admin");
  const adminRow = page.locator('tr[data-user="admin"]');
  await adminRow.getByRole("button", { name: "Remove admin" }).click();
  await adminRow.getByRole("group").getByText("Remove yourself?").waitFor();
  await adminRow.getByRole("button", { name: "Remove admin", exact: true }).click();
  await page.getByRole("alert").filter({ hasText: "the last admin cannot be removed" }).waitFor();
  await adminRow.waitFor();
  await t.scan(page, "access, removing the last admin refused");
  await t.shot("access-last-admin");

  t.step("removing the operator, who can then not log in");
  await row.getByRole("button", { name: `Remove ${user}` }).click();
  await row.getByRole("button", { name: "Keep" }).click();
  await waitForFocus(row.getByRole("button", { name: `Remove ${user}` }));
  assert.equal((await login(t, user, "operator password 2"))[0], 200, "kept when the removal is not confirmed");
  await row.getByRole("button", { name: `Remove ${user}` }).click();
  await row.getByRole("button", { name: `Remove ${user}`, exact: true }).click();
  await page.getByRole("status").filter({ hasText: `${user} removed.` }).waitFor();
  await row.waitFor({ state: "detached" });
  assert.equal((await login(t, user, "operator password 2"))[0], 401, "a removed user");
  await t.scan(page, "access after removing");
  await t.shot("access-removed");
}
