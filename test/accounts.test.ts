/**
 * Accounts: registration (and its refusals, which must leave nothing behind),
 * sign-in, the token lifecycle, database logins, and the runtime roles.
 */
import test from "ava";
import pg from "pg";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { startStack, gql, errCode, signUp, type Stack } from "./helpers/stack.ts";

let db: TestDb;
let stack: Stack;
test.before(async () => {
  db = await createTestDb();
  stack = await startStack(db);
});
test.after.always(async () => {
  await stack?.stop();
  await db?.drop();
});

const REGISTER = `mutation($e:String!,$p:String!,$h:String){register(input:{email:$e,password:$p,handle:$h}){user{id email handle createdAt}}}`;
const AUTH = `mutation($e:String!,$p:String!){authenticate(input:{email:$e,password:$p}){jwtToken}}`;

/** Everything a registration creates, counted: user rows, roles with this DB's prefix, schemas. */
async function footprint() {
  const { rows } = await db.admin.query(`
    select (select count(*) from app_public.users)::int as users,
           (select count(*) from app_private.user_secrets)::int as secrets,
           (select count(*) from pg_roles where rolname like (select value from app_private.settings where key = 'role_prefix') || '%')::int as roles,
           (select count(*) from pg_namespace where nspname not like 'pg\\_%' and nspname not in ('public','information_schema','app_public','app_hidden','app_private','graphile_migrate','graphile_worker'))::int as schemas`);
  return rows[0];
}

async function post(path: string, body: unknown, token?: string) {
  const r = await fetch(stack.url + path, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

test.serial("register creates the user, their role and their schema; handle defaults from the email", async (t) => {
  const r = await gql(stack.url, REGISTER, { e: "Ada.Lovelace@Example.com", p: "analytical engine" });
  t.falsy(r.errors);
  const u = r.data.register.user;
  t.is(u.email, "Ada.Lovelace@Example.com");
  t.is(u.handle, "ada_lovelace");
  t.truthy(u.id);
  t.truthy(Date.parse(u.createdAt));
  const { rows } = await db.admin.query(
    `select u.role_name, r.rolcanlogin, r.rolsuper, r.rolbypassrls, n.nspname, pg_get_userbyid(n.nspowner) as schema_owner,
            (select count(*) from app_private.user_secrets s where s.user_id = u.id and s.password_hash like '$2a$10$%')::int as bcrypt
       from app_public.users u join pg_roles r on r.rolname = u.role_name join pg_namespace n on n.nspname = u.handle
      where u.handle = 'ada_lovelace'`);
  t.is(rows.length, 1);
  t.false(rows[0].rolcanlogin);
  t.false(rows[0].rolsuper);
  t.false(rows[0].rolbypassrls);
  t.is(rows[0].schema_owner, rows[0].role_name);
  t.is(rows[0].bcrypt, 1, "password stored as a bcrypt hash with cost 10");
  // A second default handle from the same local part gets a number.
  const r2 = await gql(stack.url, REGISTER, { e: "ada.lovelace@other.org", p: "analytical engine" });
  t.is(r2.data.register.user.handle, "ada_lovelace1");
});

const bad: Array<[string, { e: string; p: string; h?: string }, string]> = [
  ["malformed email", { e: "not-an-email", p: "long enough" }, "TDR01"],
  ["email with spaces", { e: "a b@c.de", p: "long enough" }, "TDR01"],
  ["short password", { e: "short@example.com", p: "1234567" }, "TDR02"],
  ["password over 72 bytes", { e: "long@example.com", p: "x".repeat(73) }, "TDR02"],
  ["handle with a quote", { e: "q@example.com", p: "long enough", h: `bob"; drop schema public; --` }, "TDR03"],
  ["handle with unicode look-alike", { e: "u@example.com", p: "long enough", h: "аdmin1" }, "TDR03"],
  ["handle too short", { e: "s@example.com", p: "long enough", h: "ab" }, "TDR03"],
  ["handle starting with a digit", { e: "d@example.com", p: "long enough", h: "1abc" }, "TDR03"],
  ["reserved handle public", { e: "p@example.com", p: "long enough", h: "public" }, "TDR04"],
  ["reserved handle app_public", { e: "ap@example.com", p: "long enough", h: "app_public" }, "TDR04"],
  ["reserved handle pg_*", { e: "pg@example.com", p: "long enough", h: "pg_toast2" }, "TDR04"],
  ["reserved handle cron", { e: "cr@example.com", p: "long enough", h: "cron" }, "TDR04"],
  ["duplicate email (any case)", { e: "ADA.LOVELACE@example.COM", p: "long enough" }, "TDR05"],
  ["duplicate handle", { e: "new@example.com", p: "long enough", h: "ada_lovelace" }, "TDR06"],
];
for (const [name, input, code] of bad) {
  test.serial(`register refuses ${name} with ${code} and creates nothing`, async (t) => {
    const before = await footprint();
    const r = await gql(stack.url, REGISTER, input);
    t.is(errCode(r), code, JSON.stringify(r.errors));
    t.truthy(r.errors![0].message.length > 5);
    t.deepEqual(await footprint(), before);
  });
}

test.serial("authenticate: wrong password and unknown email fail alike", async (t) => {
  await signUp(stack.url, "carol");
  const a = await gql(stack.url, AUTH, { e: "carol@example.com", p: "wrong password" });
  const b = await gql(stack.url, AUTH, { e: "nobody@example.com", p: "correct horse battery" });
  t.is(errCode(a), "TDA06");
  t.is(errCode(b), "TDA06");
  t.is(a.errors![0].message, b.errors![0].message);
  t.is(a.data.authenticate, null);
});

test.serial("currentUser is the caller, or null when anonymous", async (t) => {
  const dave = await signUp(stack.url, "dave");
  const me = await gql(stack.url, "{currentUser{id handle email}}", {}, dave.token);
  t.is(me.data.currentUser.handle, "dave");
  const anon = await gql(stack.url, "{currentUser{id}}");
  t.deepEqual(anon.data, { currentUser: null });
  t.falsy(anon.errors);
});

test.serial("token lifecycle: renew, logout ends the session everywhere, tampered/expired/garbled/alg=none refused", async (t) => {
  const erin = await signUp(stack.url, "erin");
  const renewed = await gql(stack.url, "mutation{renewToken(input:{}){jwtToken}}", {}, erin.token);
  const token2 = renewed.data.renewToken.jwtToken;
  t.truthy(token2);
  t.is((await gql(stack.url, "{currentUser{handle}}", {}, token2)).data.currentUser.handle, "erin");

  // Tampered signature, payload edited to another user, garbled, alg=none: 401 with TDA03.
  const [h, p, s] = erin.token.split(".");
  const flip = (x: string) => (x[5] === "A" ? x.slice(0, 5) + "B" + x.slice(6) : x.slice(0, 5) + "A" + x.slice(6));
  const claims = JSON.parse(Buffer.from(p, "base64url").toString());
  const forged = Buffer.from(JSON.stringify({ ...claims, sub: "1", role: "tdc_owner" })).toString("base64url");
  const none = Buffer.from(JSON.stringify({ alg: "none", typ: "JWT" })).toString("base64url");
  for (const bad of [`${h}.${p}.${flip(s)}`, `${h}.${forged}.${s}`, "garbage", `${none}.${p}.`, "a.b.c", "x".repeat(5000)]) {
    const r = await post("/graphql", { query: "{currentUser{id}}" }, bad);
    t.is(r.status, 401, bad.slice(0, 40));
    t.regex(r.body.error.code, /^TDA0[23]$/);
  }
  const malformedHeader = await fetch(stack.url + "/graphql", { method: "POST", headers: { authorization: "Basic abc", "content-type": "application/json" }, body: "{}" });
  t.is(malformedHeader.status, 401);

  // Expired: a correctly signed token whose exp has passed.
  const { rows } = await db.admin.query(
    `select app_private.sign_jwt(jsonb_build_object('sub', $1::text, 'sid', (select id::text from app_private.sessions where user_id = $1::bigint limit 1),
       'aud', 'tinydevcrm', 'iat', 1, 'exp', floor(extract(epoch from now()))::bigint - 10)) as t`, [erin.id]);
  const expired = await post("/graphql", { query: "{currentUser{id}}" }, rows[0].t);
  t.is(expired.status, 401);
  t.is(expired.body.error.code, "TDA04");

  // Logout: both tokens of the session stop working at once.
  const out = await gql(stack.url, "mutation{logout(input:{}){success}}", {}, erin.token);
  t.true(out.data.logout.success);
  for (const tok of [erin.token, token2]) {
    const r = await post("/graphql", { query: "{currentUser{id}}" }, tok);
    t.is(r.status, 401);
    t.is(r.body.error.code, "TDA05");
  }
  // A fresh sign-in works again.
  const again = await gql(stack.url, AUTH, { e: erin.email, p: erin.password });
  t.truthy(again.data.authenticate.jwtToken);
});

test.serial("API tokens: shown once, listed without the secret, usable, revocable, expirable", async (t) => {
  const fay = await signUp(stack.url, "fay");
  const c = await gql(stack.url, `mutation{createApiToken(input:{name:"script"}){result{id token}}}`, {}, fay.token);
  const { id, token } = c.data.createApiToken.result;
  t.regex(token, /^tdc_[A-Za-z0-9_-]{40}$/);
  const list = await gql(stack.url, "{apiTokens{nodes{id name tokenPrefix revokedAt}}}", {}, fay.token);
  t.deepEqual(list.data.apiTokens.nodes.map((n: any) => n.name), ["script"]);
  t.is(list.data.apiTokens.nodes[0].tokenPrefix, token.slice(0, 10));
  const noHash = await gql(stack.url, "{apiTokens{nodes{tokenHash}}}", {}, fay.token);
  t.truthy(noHash.errors, "the hash is not part of the API");
  const { rows } = await db.admin.query("select count(*)::int as n from app_public.api_tokens where token_hash = digest($1, 'sha256')", [token]);
  t.is(rows[0].n, 1, "stored only as sha256");

  t.is((await gql(stack.url, "{currentUser{handle}}", {}, token)).data.currentUser.handle, "fay");
  const renew = await gql(stack.url, "mutation{renewToken(input:{}){jwtToken}}", {}, token);
  t.is(errCode(renew), "TDA05", "API tokens are not sessions");

  const rv = await gql(stack.url, `mutation($id:BigInt!){revokeApiToken(input:{id:$id}){apiToken{revokedAt}}}`, { id }, fay.token);
  t.truthy(rv.data.revokeApiToken.apiToken.revokedAt);
  const after = await post("/graphql", { query: "{currentUser{id}}" }, token);
  t.is(after.status, 401);
  t.is(after.body.error.code, "TDA05");

  const past = await gql(stack.url, `mutation{createApiToken(input:{name:"old", expiresAt:"2020-01-01T00:00:00Z"}){result{id}}}`, {}, fay.token);
  t.is(errCode(past), "TDA08");
  const soon = await gql(stack.url, `mutation{createApiToken(input:{name:"soon", expiresAt:"2999-01-01T00:00:00Z"}){result{id token}}}`, {}, fay.token);
  await db.admin.query("update app_public.api_tokens set expires_at = now() - interval '1 second' where id = $1", [soon.data.createApiToken.result.id]);
  const exp = await post("/graphql", { query: "{currentUser{id}}" }, soon.data.createApiToken.result.token);
  t.is(exp.body.error.code, "TDA04");
  const empty = await gql(stack.url, `mutation{createApiToken(input:{name:""}){result{id}}}`, {}, fay.token);
  t.is(errCode(empty), "TDA08");
  const anon = await gql(stack.url, `mutation{createApiToken(input:{name:"x"}){result{id}}}`);
  t.truthy(anon.errors);
});

test.serial("enableDatabaseLogin: psql lands in the user's own schema; disable revokes it", async (t) => {
  const gus = await signUp(stack.url, "gus");
  const r = await gql(stack.url, "mutation{enableDatabaseLogin(input:{}){uri}}", {}, gus.token);
  const uri: string = r.data.enableDatabaseLogin.uri;
  t.regex(uri, /^postgres:\/\/[a-z0-9_]+:[A-Za-z0-9_-]+@localhost:\d+\//);
  const c = new pg.Client({ connectionString: uri });
  c.on("error", () => {}); // disableDatabaseLogin terminates this session on purpose
  await c.connect();
  const { rows } = await c.query("select current_user, current_schema() as schema");
  t.is(rows[0].schema, "gus");
  t.is(rows[0].current_user, gus.roleName);
  await c.query("create table notes (id int primary key, body text)");
  await c.query("insert into notes values (1, 'hello')");
  t.is((await c.query("select body from gus.notes")).rows[0].body, "hello");
  const off = await gql(stack.url, "mutation{disableDatabaseLogin(input:{}){success}}", {}, gus.token);
  t.true(off.data.disableDatabaseLogin.success);
  await t.throwsAsync(c.query("select 1"), undefined, "open session was closed");
  await c.end().catch(() => {});
  const c2 = new pg.Client({ connectionString: uri });
  await t.throwsAsync(c2.connect());
  await c2.end().catch(() => {});
});

test("runtime roles hold no superuser and no BYPASSRLS", async (t) => {
  const { rows } = await db.admin.query(
    "select rolname, rolsuper, rolbypassrls, rolinherit from pg_roles where rolname in ('tdc_owner','tdc_authenticator','tdc_anonymous','tdc_user') order by 1");
  t.is(rows.length, 4);
  for (const r of rows) {
    t.false(r.rolsuper, r.rolname);
    t.false(r.rolbypassrls, r.rolname);
  }
  t.false(rows.find((r) => r.rolname === "tdc_authenticator")!.rolinherit, "authenticator is NOINHERIT");
  // The server's connections really are the authenticator.
  const { rows: who } = await stack.server.pool.query("select current_user, session_user");
  t.deepEqual(who[0], { current_user: "tdc_authenticator", session_user: "tdc_authenticator" });
});
