/**
 * Tenant isolation matrix: user B tries every way we know to read, list,
 * alter, drop or infer user A's objects — through GraphQL and through a psql
 * login of B's own — including identity tricks (set_config, SET ROLE, RESET
 * ROLE, SET SESSION AUTHORIZATION) and catalog reads. Catalog *names* of other
 * schemas may be visible as Postgres shows them; row data never.
 * Later capabilities (tables, views, channels, imports) extend this matrix in
 * their own test files.
 */
import test from "ava";
import pg from "pg";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { startStack, gql, errCode, signUp, type Stack, type TestUser } from "./helpers/stack.ts";

let db: TestDb;
let stack: Stack;
let A: TestUser, B: TestUser;
let psqlA: pg.Client, psqlB: pg.Client;
let aTokenId: string;

async function login(u: TestUser) {
  const r = await gql(stack.url, "mutation{enableDatabaseLogin(input:{}){uri}}", {}, u.token);
  const c = new pg.Client({ connectionString: r.data.enableDatabaseLogin.uri });
  c.on("error", () => {});
  await c.connect();
  return c;
}

test.before(async () => {
  db = await createTestDb();
  stack = await startStack(db);
  A = await signUp(stack.url, "alice");
  B = await signUp(stack.url, "bob");
  psqlA = await login(A);
  psqlB = await login(B);
  await psqlA.query("create table secrets (id int primary key, note text)");
  await psqlA.query("insert into secrets values (1, 'the eagle flies at midnight')");
  await psqlA.query("create view secret_view as select * from secrets");
  await psqlA.query("create function whisper() returns text language sql as $$ select note from alice.secrets limit 1 $$");
  const t = await gql(stack.url, `mutation{createApiToken(input:{name:"a"}){result{id}}}`, {}, A.token);
  aTokenId = t.data.createApiToken.result.id;
});
test.after.always(async () => {
  await psqlA?.end().catch(() => {});
  await psqlB?.end().catch(() => {});
  await stack?.stop();
  await db?.drop();
});

/** B runs `sql` in a savepoint-free fresh transaction; returns the SQLSTATE or "ok" and rows. */
async function asB(sql: string): Promise<{ code: string; rows: any[] }> {
  try {
    await psqlB.query("begin");
    const r = await psqlB.query(sql);
    return { code: "ok", rows: r.rows ?? [] };
  } catch (e: any) {
    return { code: e.code, rows: [] };
  } finally {
    await psqlB.query("rollback").catch(() => {});
  }
}

const denied: Array<[string, string]> = [
  ["read A's table", "select * from alice.secrets"],
  ["read A's view", "select * from alice.secret_view"],
  ["call A's function", "select alice.whisper()"],
  ["alter A's table", "alter table alice.secrets add column x int"],
  ["drop A's table", "drop table alice.secrets"],
  ["drop A's schema", "drop schema alice cascade"],
  ["create in A's schema", "create table alice.intruder (id int)"],
  ["grant to self on A's table", "grant select on alice.secrets to current_user"],
  ["set role A", `set role ${"tdc" /* placeholder replaced below */}`],
  ["read password hashes", "select * from app_private.user_secrets"],
  ["read sessions", "select * from app_private.sessions"],
  ["read settings (JWT secret)", "select * from app_private.settings"],
  ["read the event log", "select * from app_private.events"],
  ["read token hashes", "select token_hash from app_public.api_tokens"],
  ["resolve tokens like the server", "select * from app_hidden.resolve_token('x')"],
  ["queue stream re-checks like the server", "select app_hidden.queue_stream_expiry(1, '0123456789abcdef', now())"],
  ["emit events", "select app_hidden.emit_event(1, 'imports', null, 'x', '{}')"],
  ["sign a JWT", "select app_private.sign_jwt('{}')"],
  ["read pg_authid", "select rolpassword from pg_authid"],
  ["read a server file", "select pg_read_file('/etc/passwd')"],
  ["become the owner", "set role tdc_owner"],
  ["become the authenticator", "set role tdc_authenticator"],
  ["session authorization A", "set session authorization alice"],
];

test.serial("B cannot read, alter, drop or create in A's schema, nor reach app secrets", async (t) => {
  for (const [what, sqlIn] of denied) {
    const sql = sqlIn === "set role tdc" ? `set role ${A.roleName}` : sqlIn.replace("set session authorization alice", `set session authorization ${A.roleName}`);
    const r = await asB(sql);
    t.not(r.code, "ok", `${what}: ${sql}`);
    t.true(["42501", "42883", "3F000", "42P01"].includes(r.code) || r.code.startsWith("42"), `${what}: ${r.code}`);
  }
  // Nothing changed for A.
  t.is((await psqlA.query("select count(*)::int as n from secrets")).rows[0].n, 1);
});

test.serial("identity cannot be forged with set_config, RESET ROLE or SET ROLE tdc_user", async (t) => {
  const viaConfig = await asB(`select set_config('role', '${A.roleName}', true)`);
  t.is(viaConfig.code, "42501");
  const reset = await asB("reset role; select current_user");
  t.is(reset.code, "ok");
  // set_config inside a WHERE clause (the classic RLS bypass) changes nothing either.
  const midQuery = await asB(`select u.email from app_public.users u where set_config('role', '${A.roleName}', true) is not null`);
  t.is(midQuery.code, "42501");
  // The group role has no identity: B sees fewer rows, not more.
  await psqlB.query("begin");
  await psqlB.query("set local role tdc_user");
  const users = await psqlB.query("select * from app_public.users");
  t.is(users.rows.length, 0);
  await psqlB.query("rollback");
  // Settings that the server sets cannot elevate: a foreign session id ends nothing of A's.
  const { rows } = await db.admin.query("select id from app_private.sessions where user_id = $1 limit 1", [A.id]);
  await psqlB.query("begin");
  await psqlB.query("select set_config('tdc.session_id', $1, true)", [rows[0].id]);
  const out = await psqlB.query("select app_public.logout() as ok");
  await psqlB.query("commit");
  t.false(out.rows[0].ok);
  t.is((await gql(stack.url, "{currentUser{handle}}", {}, A.token)).data.currentUser.handle, "alice");
});

test.serial("app tables show B only B's rows, in psql and in GraphQL", async (t) => {
  const users = await asB("select handle from app_public.users");
  t.deepEqual(users.rows.map((r) => r.handle), ["bob"]);
  const tokens = await asB("select id from app_public.api_tokens");
  t.deepEqual(tokens.rows, []);
  const g = await gql(stack.url, "{users{nodes{handle}} apiTokens{nodes{id}} channels{nodes{id}}}", {}, B.token);
  t.falsy(g.errors);
  t.deepEqual(g.data.users.nodes, [{ handle: "bob" }]);
  t.deepEqual(g.data.apiTokens.nodes, []);
  const byId = await gql(stack.url, `query($id:BigInt!){apiTokenById(id:$id){id}}`, { id: aTokenId }, B.token);
  t.is(byId.data.apiTokenById, null);
  const revoke = await gql(stack.url, `mutation($id:BigInt!){revokeApiToken(input:{id:$id}){apiToken{id}}}`, { id: aTokenId }, B.token);
  t.is(errCode(revoke), "TDA08");
  const still = await db.admin.query("select revoked_at from app_public.api_tokens where id = $1", [aTokenId]);
  t.is(still.rows[0].revoked_at, null);
});

test.serial("catalogs show names at most, never A's data", async (t) => {
  const tables = await asB("select table_schema, table_name from information_schema.tables where table_schema = 'alice'");
  t.deepEqual(tables.rows, [], "information_schema lists only what B may use");
  const cols = await asB("select column_name from information_schema.columns where table_schema = 'alice'");
  t.deepEqual(cols.rows, []);
  const stats = await asB("select * from pg_stats where schemaname = 'alice'");
  t.deepEqual(stats.rows, [], "pg_stats (histograms of values) filters by privilege");
  const stat = await asB("select * from pg_statistic");
  t.is(stat.code, "42501");
  const viewDef = await asB("select definition from pg_views where schemaname = 'alice'");
  // pg_views shows definitions of views in other schemas; ours reference only A's table names.
  t.true(viewDef.rows.every((r) => !String(r.definition).includes("eagle")));
  const fnSrc = await asB("select prosrc from pg_proc where proname = 'whisper'");
  t.true(fnSrc.rows.every((r) => !String(r.prosrc).includes("eagle")));
});

test.serial("B's psql session cannot see A's sessions' queries or kill them", async (t) => {
  const act = await asB(`select query from pg_stat_activity where usename = '${A.roleName}'`);
  t.true(act.rows.every((r) => r.query === "<insufficient privilege>" || r.query === null));
  const kill = await asB(`select pg_terminate_backend(pid) from pg_stat_activity where usename = '${A.roleName}'`);
  t.not(kill.code, "ok");
  t.is((await psqlA.query("select 1 as one")).rows[0].one, 1);
});
