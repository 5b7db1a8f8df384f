// The node's API as the browser tests check it, called from inside the page (the same
// origin and certificate the console uses). `t` is the flows' context (console.mjs).

/** `method path` with `headers` and a JSON `body`, as is (no token added): [status, json]. */
export async function request(t, method, path, { headers = {}, body } = {}) {
  return t.page.evaluate(
    async ([url, method, headers, body]) => {
      const r = await fetch(url, {
        method,
        headers: body === undefined ? headers : { "content-type": "application/json", ...headers },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await r.text();
      let json = null;
      try {
        json = text ? JSON.parse(text) : null;
      } catch {
        json = text;
      }
      return [r.status, json];
    },
    [`${t.base}${path}`, method, headers, body],
  );
}

/** `user` logs in through the API: [status, tokens]. */
export function login(t, user, password) {
  return request(t, "POST", "/api/v3/auth/login", { body: { username: user, password } });
}

/** `method path` with `body` as `user` (default admin, password `t.admin`): [status, json]. */
export async function api(t, method, path, body, user = "admin", password = t.admin) {
  const [status, tokens] = await login(t, user, password);
  if (status !== 200) throw new Error(`${user} cannot log in: ${status} ${JSON.stringify(tokens)}`);
  return request(t, method, path, { headers: { authorization: `Bearer ${tokens.accessToken}` }, body });
}
