/**
 * User SQL: the hostile battery. Every definition below is sent as a view
 * (createView) and most also as an ad-hoc query (runQuery); each must be
 * refused with the expected code, and a fingerprint of everything it could
 * have touched (views, relations in both users' schemas, the victim rows,
 * large objects, API tokens, events, settings, roles, refreshes, NOTIFYs) must
 * be unchanged afterwards. Then the legit edge cases must be accepted.
 */
import test from "ava";
import pg from "pg";
import { createTestDb, asRole, sqlstate, runAsUser, type TestDb } from "./helpers/db.ts";
import { startStack, gql, errCode, signUp, type Stack, type TestUser } from "./helpers/stack.ts";
import { config } from "../server/config.ts";
import { validateUserSql, UserSqlError } from "../server/usersql.ts";

let db: TestDb;
let stack: Stack;
let alice: TestUser;
let bob: TestUser;
let listener: pg.Client;
let notifications = 0;
const TIMEOUT_MS = 1000;

const asUser = (user: TestUser, sql: string) => runAsUser(db, user, sql);

/** Everything a hostile definition could have changed. */
async function fingerprint(): Promise<unknown> {
  const { rows } = await db.admin.query(`select jsonb_build_object(
      'views', (select count(*) from app_public.views),
      'relations', (select coalesce(jsonb_agg(n.nspname || '.' || c.relname order by 1), '[]') from pg_class c
                      join pg_namespace n on n.oid = c.relnamespace where n.nspname in ($1, $2)),
      'sales', (select md5(string_agg(s::text, ',' order by s.id)) from ${alice.handle}.sales s),
      'secrets', (select md5(string_agg(s::text, ',' order by s.id)) from ${bob.handle}.secrets s),
      'largeObjects', (select count(*) from pg_largeobject_metadata),
      'apiTokens', (select count(*) from app_public.api_tokens),
      'events', (select count(*) from app_private.events),
      'settings', (select md5(string_agg(key || '=' || value, ',' order by key)) from app_private.settings),
      'roles', (select jsonb_agg(jsonb_build_array(r.rolname, r.rolcanlogin, r.rolsuper) order by r.rolname) from pg_roles r
                 where r.rolname in ($3, $4)),
      'refreshes', (select count(*) from app_public.view_refreshes)) as f`,
    [alice.handle, bob.handle, alice.roleName, bob.roleName]);
  return { ...rows[0].f, notifications };
}

test.before(async () => {
  config.userSqlTimeoutMs = TIMEOUT_MS; // read per request by the plugin
  db = await createTestDb();
  stack = await startStack(db);
  alice = await signUp(stack.url);
  bob = await signUp(stack.url);
  await asUser(alice, `create table sales (id int primary key, region text not null, amount numeric not null);
    insert into sales select i, 'r' || (i % 5), i from generate_series(1, 50) i;
    create function notify_and_set() returns int language plpgsql as $f$
    begin
      perform pg_notify('tdc_events', '1');
      perform set_config('work_mem', '77kB', false);
      return 1;
    end $f$;
    create function become(r text) returns text language plpgsql as $f$
    begin perform set_config('role', r, true); return current_user; end $f$;
    create function become_immutable(r text) returns text language plpgsql immutable as $f$
    begin perform set_config('role', r, true); return current_user; end $f$;
    create function peek(r text, t text) returns text language plpgsql as $f$
    declare s text;
    begin execute format('set local role %I', r); execute format('select string_agg(secret, '','') from %s', t) into s; return s; end $f$;`);
  await asUser(bob, `create table secrets (id int primary key, secret text);
    insert into secrets values (1, 'bob''s secret');`);
  // Alice listens to her views: any event a hostile definition caused would show up in the log.
  await db.admin.query(`with c as (insert into app_public.channels (user_id, name) values ($1, 'views') returning id)
    insert into app_public.channel_sources (channel_id, kind) select id, 'view' from c`, [alice.id]);
  listener = new pg.Client({ connectionString: db.adminUrl });
  await listener.connect();
  listener.on("notification", () => notifications++);
  await listener.query("listen tdc_events");
});
test.after.always(async () => {
  await listener?.end();
  await stack?.stop();
  await db?.drop();
});

const CREATE = `mutation($n:String!,$q:String!){createView(input:{name:$n, query:$q}){view{id name}}}`;
const RUN = `query($q:String!){runQuery(query:$q){columns rows truncated}}`;

// [definition, expected code for createView, expected code for runQuery (default: same; null: skip)]
type Case = [string, string, (string | null)?];
const HOSTILE: Case[] = [
  // Several statements, hidden by comments, quoting and dollar quoting
  ["select 1; drop table sales", "TDV05"],
  ["select 1;\ndelete from sales", "TDV05"],
  ["select 1 /* ; */ ; insert into sales values (999, 'x', 1)", "TDV05"],
  ["select 1 -- harmless\n; drop table sales", "TDV05"],
  ["select ';' ; drop table sales", "TDV05"],
  ["select $$;$$; drop table sales", "TDV05"],
  ["select $x$ $$ ; $x$; truncate sales", "TDV05"],
  ["select E'\\';'; drop table sales", "TDV05"],
  ["select 1 from sales where region = 'x'''; drop table sales; --'", "TDV05"],
  ["values (1); values (2)", "TDV05"],
  ["table sales; table sales", "TDV05"],
  ["-- only a comment", "TDV05"],
  [";", "TDV05"],
  ["   ", "TDV12"],
  ["select 1 /* drop table sales", "TDV04"],
  ["select from where", "TDV04"],
  // Not a query at all
  ["drop table sales", "TDV06"],
  ["insert into sales values (1000, 'x', 1)", "TDV06"],
  ["update sales set amount = 0", "TDV06"],
  ["delete from sales", "TDV06"],
  ["merge into sales s using (select 1 as id) x on s.id = x.id when matched then delete", "TDV06"],
  ["truncate sales", "TDV06"],
  ["create table evil (a int)", "TDV06"],
  ["create table evil as select * from sales", "TDV06"],
  ["copy sales to stdout", "TDV06"],
  ["explain analyze delete from sales", "TDV06"],
  ["do $$ begin drop table sales; end $$", "TDV06"],
  ["set role tdc_owner", "TDV06"],
  ["set session authorization postgres", "TDV06"],
  ["reset role", "TDV06"],
  ["notify tdc_events, '1'", "TDV06"],
  ["listen tdc_events", "TDV06"],
  ["lock table sales", "TDV06"],
  ["prepare p as delete from sales", "TDV06"],
  ["grant select on sales to public", "TDV06"],
  ["alter role current_user with login password 'x'", "TDV06"],
  ["create function f() returns int language sql as 'select 1'", "TDV06"],
  // SELECT INTO, locking, writable CTEs (top level and nested)
  ["select * into evil from sales", "TDV06"],
  ["select * into temp evil from sales", "TDV06"],
  ["select * from sales for update", "TDV06"],
  ["select * from sales for share", "TDV06"],
  ["with x as (delete from sales returning *) select * from x", "TDV06"],
  ["with x as (insert into sales values (2000, 'x', 1) returning id) select 1", "TDV06"],
  ["with a as (select 1), b as (update sales set amount = 0 returning 1) select * from a", "TDV06"],
  ["select * from (with x as (delete from sales returning 1) select * from x) s", "TDV06"],
  ["with a as (with b as (delete from sales returning 1) select * from b) select * from a", "TDV06"],
  // Side effects no privilege stops: refused by name
  ["select pg_notify('tdc_events', '1')", "TDV07"],
  ["select pg_catalog.pg_notify('tdc_events', '1')", "TDV07"],
  ["select \"pg_notify\"('tdc_events', '1')", "TDV07"],
  ["select set_config('role', 'tdc_owner', false)", "TDV07"],
  ["select set_config('tdc.session_id', '00000000-0000-0000-0000-000000000000', false)", "TDV07"],
  ["select pg_catalog.set_config('search_path', 'app_private', false)", "TDV07"],
  ["select lo_import('/etc/passwd')", "TDV07"],
  ["select lo_from_bytea(0, 'x')", "TDV07"],
  ["select pg_advisory_lock(42)", "TDV07"],
  ["select * from dblink('dbname=postgres', 'select 1') as t(a int)", "TDV07"],
  // Stopped by the user's privileges (the query runs as the user's own role)
  ["select pg_read_file('/etc/passwd')", "42501"],
  ["select pg_ls_dir('.')", "42501"],
  ["select pg_reload_conf()", "42501"],
  ["select * from pg_authid", "42501"],
  ["select rolname, rolpassword from pg_catalog.pg_authid", "42501"],
  ["select * from app_private.user_secrets", "42501"],
  ["select * from app_private.settings", "42501"],
  ["select * from app_private.events", "42501"],
  ["select app_hidden.emit_event(1, 'view', 'x', 'view.refreshed', '{}')", "42501"],
  ["select app_private.run_refresh(1)", "42501"],
  ["select * from cron.job", "42P01"], // no pg_cron here; the cron database answers 42501 (test/jobs.test.ts)
  ["select secret from BOB.secrets", "42501"],
  ["with s as (select * from BOB.secrets) select * from s", "42501"],
  ["select pg_terminate_backend(pid) from pg_stat_activity where usename = 'tdc_authenticator'", "42501"],
  // SET ROLE tricks inside the user's own functions. The server's login role may become any user,
  // so this must be stopped by the engine: views run security-restricted, queries inside a
  // security definer function of the user's role; both refuse any change of role.
  ["select become('BOBROLE')", "42501"],
  ["select become_immutable('BOBROLE') as b", "42501"],
  ["select peek('BOBROLE', 'BOB.secrets') as p", "42501"],
  ["select become('tdc_owner')", "42501"],
  ["select become('tdc_authenticator')", "42501"],
  // Never ending: the statement timeout stops them
  ["with recursive r(n) as (select 1 union all select n + 1 from r) select count(*) from r", "TDV09"],
  ["select pg_sleep(60)::text as slept", "TDV09"],
  ["select count(*) from sales, pg_sleep(60)", "TDV09", null],
];

test.serial(`at least 40 hostile definitions are refused with a clear code and change nothing (${HOSTILE.length} cases)`, async (t) => {
  t.true(HOSTILE.length >= 40);
  const before = await fingerprint();
  let i = 0;
  for (const [raw, code, runCode] of HOSTILE) {
    const q = raw.replaceAll("BOBROLE", bob.roleName).replaceAll("BOB", bob.handle);
    i++;
    const r = await gql(stack.url, CREATE, { n: `hostile_${i}`, q }, alice.token);
    t.is(errCode(r), code, `createView: ${q} → ${JSON.stringify(r.errors ?? r.data)}`);
    t.truthy(r.errors?.[0]?.message, "a message says why");
    if (runCode !== null) {
      const r2 = await gql(stack.url, RUN, { q }, alice.token);
      t.is(errCode(r2), runCode ?? code, `runQuery: ${q} → ${JSON.stringify(r2.errors ?? r2.data)}`);
    }
    t.deepEqual(await fingerprint(), before, `nothing changed after: ${q}`);
  }
});

test.serial("the timeout also applies when the field comes through a fragment", async (t) => {
  const q = "select 1 as a from pg_sleep(60)";
  const spread = await gql(stack.url, `query($q:String!){...F} fragment F on Query {runQuery(query:$q){rows}}`, { q }, alice.token);
  t.is(errCode(spread), "TDV09");
  const inline = await gql(stack.url, `query($q:String!){... on Query {runQuery(query:$q){rows}}}`, { q }, alice.token);
  t.is(errCode(inline), "TDV09");
});

test.serial("a syntax error names its position; a multi-statement error says why", async (t) => {
  const r = await gql(stack.url, CREATE, { n: "pos", q: "select 1,\n  from sales" }, alice.token);
  t.is(errCode(r), "TDV04");
  t.regex(r.errors![0].message, /position 13 \(line 2, column 3\)/);
  const r2 = await gql(stack.url, CREATE, { n: "two", q: "select 1; select 2" }, alice.token);
  t.regex(r2.errors![0].message, /Exactly one statement/);
});

test.serial("runQuery is READ ONLY: a volatile function that writes is refused, nothing written", async (t) => {
  const before = await fingerprint();
  const r = await gql(stack.url, RUN, { q: "select t.id from app_public.create_api_token('sneaky') t" }, alice.token);
  t.is(errCode(r), "25006");
  t.deepEqual(await fingerprint(), before);
});

test.serial("runQuery undoes whatever a user's own function did besides reading (settings, NOTIFY)", async (t) => {
  const before = await fingerprint();
  const r = await gql(stack.url, RUN, { q: "select notify_and_set() as x" }, alice.token);
  t.deepEqual(r.data?.runQuery, { columns: [{ name: "x", type: "integer" }], rows: [[1]], truncated: false });
  await new Promise((res) => setTimeout(res, 200)); // a NOTIFY would have arrived by now
  t.deepEqual(await fingerprint(), before);
  // The server's pooled connections keep their settings.
  const { rows } = await stack.server.pool.query("select current_setting('work_mem') as w");
  t.not(rows[0].w, "77kB");
});

test.serial("a view's setting changes end with its creation (security-restricted, rolled back)", async (t) => {
  await asRole(db.admin, alice.roleName, async (c) => {
    await c.query(`select app_public.create_view('sandboxed', 'select 1 as a, current_setting(''work_mem'') as w')`);
    const { rows } = await c.query("select current_setting('work_mem') as w");
    t.not(rows[0].w, "77kB");
  });
});

test.serial("psql path: calling the SQL functions directly gives only the caller's own privileges", async (t) => {
  // No parser in front here: privileges are the boundary.
  const q = `select * from ${bob.handle}.secrets`;
  t.is(await asRole(db.admin, alice.roleName, (c) => sqlstate(c.query("select app_public.create_view('x', $1)", [q]))), "42501");
  t.is(await asRole(db.admin, alice.roleName, (c) => sqlstate(c.query("select * from app_public.run_query($1)", [q]))), "42501");
  // Text that tries to break out of the subquery run_query wraps it in is at best a syntax error.
  t.is(await asRole(db.admin, alice.roleName, (c) => sqlstate(c.query("select * from app_public.run_query('select 1) q limit 0) q0 on true) t; delete from sales; select (1')"))), "42601");
  t.is(await asRole(db.admin, alice.roleName, (c) => sqlstate(c.query("select app_private.run_refresh(1)"))), "42501");
  t.is(await asRole(db.admin, alice.roleName, (c) => sqlstate(c.query("select app_hidden.emit_event(1, 'view', 'x', 'x', '{}')"))), "42501");
  // Anonymous callers cannot run user SQL at all.
  t.is(await asRole(db.admin, "tdc_anonymous", (c) => sqlstate(c.query("select * from app_public.run_query('select 1')"))), "42501");
});

const LEGIT: Array<[string, unknown]> = [
  ["select region, count(*) as n from sales group by region order by region", 5],
  ["SELECT REGION FROM SALES WHERE ID = 1", 1],
  ["   \n\t  select id from sales where id <= 2", 2],
  ["-- a leading comment\nselect id from sales where id <= 3", 3],
  ["/* block\n comment */ select 1 as a", 1],
  ["select ';' as semi, 'a;b' as s, $$;$$ as d", 1],
  ["select 1 as a;", 1],
  ["select 1 as a -- trailing comment", 1],
  ["with a as (select 1 as x), b as (select x + 1 as y from a) select * from b", 1],
  ["with recursive r(n) as (select 1 union all select n + 1 from r where n < 10) select n from r", 10],
  ["values (1, 'a'), (2, 'b')", 2],
  ["table sales", 50],
  ["select s.*, lower(region) as lo from sales s where id = 1", 1],
  ["select json_build_object('a', 1) as j, point(1, 2) as p", 1],
];

test.serial("legit edge cases are accepted, as views and as queries", async (t) => {
  let i = 0;
  for (const [q, rows] of LEGIT) {
    i++;
    const r = await gql(stack.url, `mutation($n:String!,$q:String!){createView(input:{name:$n, query:$q}){view{name query rowCount}}}`,
      { n: `legit_${i}`, q }, alice.token);
    t.falsy(r.errors, `createView: ${q} → ${JSON.stringify(r.errors)}`);
    t.is(r.data?.createView?.view?.rowCount, String(rows), q);
    t.is(r.data?.createView?.view?.query, q);
    const r2 = await gql(stack.url, RUN, { q }, alice.token);
    t.falsy(r2.errors, `runQuery: ${q} → ${JSON.stringify(r2.errors)}`);
    t.is(r2.data?.runQuery?.rows?.length, rows, q);
  }
});

test("the parser check alone: kinds, positions, nesting", async (t) => {
  const code = async (q: string) => { try { await validateUserSql(q); return "ok"; } catch (e) { return (e as UserSqlError).code; } };
  t.is(await code("select 1"), "ok");
  t.is(await code("table t"), "ok");
  t.is(await code("values (1)"), "ok");
  t.is(await code("select (select 1 from t for update)"), "TDV06");
  t.is(await code("select * from t where exists (select 1 into x)"), "TDV06"); // INTO in a subquery too
  t.is(await code("select lower('A')"), "ok"); // lo_ prefix only
  t.is(await code("select pg_sleep(1)"), "ok"); // the timeout handles it
  t.is(await code(42 as any), "TDV12");
});
