/**
 * User code must never run in the server's session outside a definer function.
 * The server logs in as tdc_authenticator, a member of every user role, so code
 * that runs there could set_config('role', <another user>) and read their data
 * (and code run by an owner-owned definer function would run as tdc_owner).
 * Mallory writes steal(): it tries app_private, then switches to the victim's
 * role and copies the victim's secret into her own table and returns it. She
 * wires it into a trigger, an RLS policy (forced), a column default, a view and
 * an index expression (a function falsely marked immutable), then drives every
 * tables/import/export entry point. Each must end without the escalation: the
 * secret never appears in a response or in her tables, app_private was not
 * read, the victim's table is unchanged; the operation fails cleanly with a code
 * (the role change is refused) or succeeds harmlessly.
 */
import test from "ava";
import pg from "pg";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { startStack, gql, signUp, type Stack, type TestUser } from "./helpers/stack.ts";

const SECRET = "TOP-SECRET-7f3a9";

let db: TestDb;
let stack: Stack;
let A: TestUser, B: TestUser;
let psqlA: pg.Client;
let vaultBefore: { n: number; h: string };

async function login(u: TestUser) {
  const r = await gql(stack.url, "mutation{enableDatabaseLogin(input:{}){uri}}", {}, u.token);
  if (r.errors) throw new Error(JSON.stringify(r.errors));
  const c = new pg.Client({ connectionString: r.data.enableDatabaseLogin.uri });
  c.on("error", () => {});
  await c.connect();
  return c;
}

async function vault() {
  const { rows } = await db.admin.query("select count(*)::int as n, md5(coalesce(string_agg(v::text, '|' order by v::text), '')) as h from victim.vault v");
  return rows[0];
}

async function imp(table: string, body: string, query = "") {
  const r = await fetch(`${stack.url}/tables/${table}/import${query ? "?" + query : ""}`, {
    method: "POST", body, headers: { "content-type": "text/csv", authorization: `Bearer ${A.token}` },
  });
  const text = await r.text();
  return { status: r.status, text, body: JSON.parse(text) };
}

async function exp(table: string) {
  const r = await fetch(`${stack.url}/tables/${table}/export`, { headers: { authorization: `Bearer ${A.token}` } });
  return { status: r.status, text: await r.text() };
}

/** The end state every hostile case must leave. */
async function assertNoEscalation(t: any, responseText: string) {
  t.false(responseText.includes(SECRET), "the secret must not reach a response");
  const loot = await db.admin.query("select v from mallory.loot");
  t.false(loot.rows.some((r) => String(r.v).includes(SECRET)), "the secret must not reach mallory's tables");
  t.false(loot.rows.some((r) => String(r.v).startsWith("app_private")), "app_private must not have been read");
  // Every table of mallory's, whatever it holds.
  const tables = await db.admin.query("select format('%I.%I', schemaname, tablename) as t from pg_tables where schemaname = 'mallory'");
  for (const { t: name } of tables.rows) {
    const all = await db.admin.query(`select coalesce(string_agg(x::text, '|'), '') as s from ${name} x`);
    t.false(all.rows[0].s.includes(SECRET), `the secret must not be in ${name}`);
  }
  t.deepEqual(await vault(), vaultBefore, "the victim's table is unchanged");
}

test.before(async () => {
  db = await createTestDb();
  stack = await startStack(db);
  A = await signUp(stack.url, "mallory");
  B = await signUp(stack.url, "victim");
  const psqlB = await login(B);
  await psqlB.query("create table vault (id int primary key, secret text)");
  await psqlB.query("insert into vault values (1, $1)", [SECRET]);
  await psqlB.end();
  vaultBefore = await vault();

  psqlA = await login(A);
  await psqlA.query(`
    create table loot (v text);
    create function steal() returns text language plpgsql as $f$
    declare s text; n bigint;
    begin
      begin
        select count(*) into n from app_private.user_secrets;
        insert into mallory.loot values ('app_private: ' || n);
      exception when insufficient_privilege then null;
      end;
      perform set_config('role', '${B.roleName}', true);
      select secret into s from victim.vault limit 1;
      perform set_config('role', '${A.roleName}', true);
      insert into mallory.loot values (s);
      return s;
    end $f$;
    create function steal_imm(x text) returns text language plpgsql immutable as $f$ begin return mallory.steal(); end $f$;

    create table t_trig (v text, s text);
    insert into t_trig values ('kept', null);
    create function t_trig_fn() returns trigger language plpgsql as $f$ begin new.s := mallory.steal(); return new; end $f$;
    create trigger t_trig_steal before insert on t_trig for each row execute function t_trig_fn();

    create table t_rls (v text);
    insert into t_rls values ('kept');
    alter table t_rls enable row level security;
    alter table t_rls force row level security;
    create policy p on t_rls using (mallory.steal() is not null) with check (mallory.steal() is not null);

    create table t_def (v text, s text default mallory.steal());

    create view v_steal as select mallory.steal() as s;

    create table t_idx (v text);
    create index t_idx_steal on t_idx (mallory.steal_imm(v));

    create table plain (id int primary key, name text not null, born date);
    create table touched (id int primary key, name text, updated_at timestamptz);
    create function touch() returns trigger language plpgsql as $f$ begin new.updated_at := now(); return new; end $f$;
    create trigger _100_touch before insert or update on touched for each row execute function touch();
    insert into touched (id, name) values (99, 'old');
  `);
});

test.after.always(async () => {
  await psqlA?.end().catch(() => {});
  await stack?.stop();
  await db?.drop();
});

for (const table of ["t_trig", "t_rls", "t_def", "t_idx"]) {
  for (const mode of ["append", "replace"]) {
    test.serial(`import (${mode}) into a table whose ${table.slice(2)} code steals: refused cleanly, nothing changed`, async (t) => {
      const before = await db.admin.query(`select count(*)::int as n from mallory.${table}`);
      const r = await imp(table, "v\nhello\nworld\n", `mode=${mode}`);
      t.is(r.status, 403, r.text);
      t.is(r.body.error.code, "TDI16");
      t.regex(r.body.error.message, /role/);
      const after = await db.admin.query(`select count(*)::int as n from mallory.${table}`);
      t.is(after.rows[0].n, before.rows[0].n, "all or nothing");
      const rec = await db.admin.query("select status, error->>'code' as code from app_public.imports where table_name = $1 order by id desc limit 1", [table]);
      t.deepEqual(rec.rows[0], { status: "failed", code: "TDI16" });
      await assertNoEscalation(t, r.text);
    });
  }
}

test.serial("export of a view or a policy-guarded table that steals: refused cleanly", async (t) => {
  for (const name of ["v_steal", "t_rls"]) {
    const r = await exp(name);
    t.is(r.status, 403, r.text);
    t.is(JSON.parse(r.text).error.code, "TDI16");
    await assertNoEscalation(t, r.text);
  }
  // Code that only runs on writes does not disturb a read.
  const ok = await exp("t_trig");
  t.is(ok.status, 200);
  t.is(ok.text, "v,s\nkept,\n");
  await assertNoEscalation(t, ok.text);
});

test.serial("rows() of a view or a policy-guarded table that steals: GraphQL error with a code", async (t) => {
  for (const name of ["v_steal", "t_rls"]) {
    const r = await gql(stack.url, "query($r:String!){rows(relation:$r)}", { r: name }, A.token);
    t.truthy(r.errors, JSON.stringify(r));
    t.is(r.errors![0].extensions?.code, "42501");
    t.regex(r.errors![0].message, /security-definer/);
    await assertNoEscalation(t, JSON.stringify(r));
  }
});

test.serial("tables(exactCounts: true) over a policy that steals: no count as tdc_owner, a clean error", async (t) => {
  const r = await gql(stack.url, "{tables(exactCounts:true){nodes{name exactRows}}}", {}, A.token);
  t.truthy(r.errors, JSON.stringify(r));
  t.is(r.errors![0].extensions?.code, "42501");
  await assertNoEscalation(t, JSON.stringify(r));
  // Without exact counts nothing of the user's runs.
  const ok = await gql(stack.url, "{tables{nodes{name exactRows}}}", {}, A.token);
  t.falsy(ok.errors);
  t.true(ok.data.tables.nodes.some((x: any) => x.name === "t_rls"));
});

test.serial("a deferrable constraint trigger (it would fire at commit) makes imports refuse with TDI15", async (t) => {
  await psqlA.query(`
    -- Fired once by the import's SET CONSTRAINTS ALL IMMEDIATE (inside the definer function), it
    -- defers everything again and queues itself: that second event would fire at COMMIT.
    create function steal_tg() returns trigger language plpgsql as $f$
    begin
      if new.v = 'first' then
        set constraints all deferred;
        insert into mallory.t_late values ('second');
      else
        perform mallory.steal();
      end if;
      return null;
    end $f$;
    create table t_late (v text);
    create constraint trigger late after insert on t_late deferrable initially deferred for each row execute function steal_tg();
    create function fwd() returns trigger language plpgsql as $f$ begin insert into mallory.t_late values ('first'); return new; end $f$;
    create table t_fwd (id int, name text);
    create trigger _100_fwd before insert on t_fwd for each row execute function fwd();
  `);
  try {
    const r = await imp("t_fwd", "id,name\n1,x\n");
    t.is(r.status, 409, r.text);
    t.is(r.body.error.code, "TDI15");
    const n = await db.admin.query("select (select count(*)::int from mallory.t_fwd) + (select count(*)::int from mallory.t_late) as n");
    t.is(n.rows[0].n, 0);
    await assertNoEscalation(t, r.text);
  } finally {
    await psqlA.query("drop table t_late; drop table t_fwd");
  }
});

test.serial("a WITH HOLD cursor opened by a trigger (it would run at commit) is closed before the commit", async (t) => {
  await psqlA.query(`
    create function hold() returns trigger language plpgsql as $f$
    begin execute 'declare held cursor with hold for select mallory.steal()'; return new; end $f$;
    create table t_hold (id int);
    create trigger _100_hold before insert on t_hold for each row execute function hold();
  `);
  const r = await imp("t_hold", "id\n1\n");
  t.is(r.status, 200, r.text);
  t.is(r.body.path, "safe");
  await assertNoEscalation(t, r.text);
  const loot = await db.admin.query("select count(*)::int as n from mallory.loot");
  t.is(loot.rows[0].n, 0, "steal() never ran");
});

test.serial("alterTable that rewrites a table with user index/generated expressions, and imports into it: no escalation", async (t) => {
  // steal_quiet swallows its own failure, so it can be set up from psql (where the role change fails).
  await psqlA.query(`
    create function steal_quiet(x text) returns text language plpgsql immutable as $f$
    begin return mallory.steal(); exception when others then return x; end $f$;
    create table t_rw (v text, g text generated always as (mallory.steal_quiet(v)) stored);
    insert into t_rw (v) values ('a'), ('b');
    create index t_rw_steal on t_rw (mallory.steal_quiet(v));
  `);
  const r = await gql(stack.url, `mutation{alterTable(input:{name:"t_rw", addColumns:[{name:"k", type:"uuid", default:"gen_random_uuid()"}, {name:"n", type:"bigint", default:"identity"}]}){table{name}}}`, {}, A.token);
  t.falsy(r.errors, JSON.stringify(r.errors));
  await assertNoEscalation(t, JSON.stringify(r));
  const i = await imp("t_rw", "v\nc\n");
  t.is(i.status, 200, i.text);
  t.is(i.body.path, "safe");
  await assertNoEscalation(t, i.text);
  const g = await db.admin.query("select string_agg(g, ',' order by v) as g from mallory.t_rw");
  t.is(g.rows[0].g, "a,b,c");
  const loot = await db.admin.query("select v from mallory.loot");
  t.deepEqual(loot.rows, []);
});

test.serial("a plain table takes the fast path (direct COPY)", async (t) => {
  const r = await imp("plain", "id,name,born\n1,Ann,1990-01-02\n2,Bob,\n");
  t.is(r.status, 200, r.text);
  t.is(r.body.path, "fast");
  t.is(r.body.rows, 2);
  const { rows } = await db.admin.query("select id, name, born::text from mallory.plain order by id");
  t.deepEqual(rows, [{ id: 1, name: "Ann", born: "1990-01-02" }, { id: 2, name: "Bob", born: null }]);
  // A bad value keeps its line number on the fast path.
  const bad = await imp("plain", "id,name,born\n3,Cy,1990-01-02\n4,Di,1990-02-31\n");
  t.is(bad.status, 422);
  t.is(bad.body.error.code, "TDI08");
  t.is(bad.body.error.line, 3);
});

test.serial("a table with a harmless trigger imports through the safe path (append and replace)", async (t) => {
  const r = await imp("touched", "id,name\n1,Ann\n2,Bob\n");
  t.is(r.status, 200, r.text);
  t.is(r.body.path, "safe");
  t.is(r.body.rows, 2);
  let q = await db.admin.query("select id, name, updated_at is not null as touched from mallory.touched order by id");
  t.deepEqual(q.rows, [{ id: 1, name: "Ann", touched: true }, { id: 2, name: "Bob", touched: true }, { id: 99, name: "old", touched: true }]);

  const rep = await imp("touched", "id,name\n5,Eve\n", "mode=replace");
  t.is(rep.status, 200, rep.text);
  t.is(rep.body.path, "safe");
  q = await db.admin.query("select id, name, updated_at is not null as touched from mallory.touched order by id");
  t.deepEqual(q.rows, [{ id: 5, name: "Eve", touched: true }]);

  // Built-in column types are staged as they are: a bad value still names its line.
  const bad = await imp("touched", "id,name\n6,F\nx,G\n");
  t.is(bad.status, 422);
  t.is(bad.body.error.code, "TDI08");
  t.is(bad.body.error.line, 3);
  // A constraint violated on the way in (the insert from the stage): TDI10, nothing kept.
  const dup = await imp("touched", "id,name\n7,G\n5,dup\n");
  t.is(dup.status, 422);
  t.is(dup.body.error.code, "TDI10");
  q = await db.admin.query("select count(*)::int as n from mallory.touched");
  t.is(q.rows[0].n, 1);
  // The safe path leaves no helper function behind.
  const fns = await db.admin.query("select count(*)::int as n from pg_proc where pronamespace = 'mallory'::regnamespace and proname like 'tdc_fn_%'");
  t.is(fns.rows[0].n, 0);
});

test.serial("rows() and exact counts still work through the definer read", async (t) => {
  const r = await gql(stack.url, `query{rows(relation:"plain", orderBy:["-id"], where:{name:"Ann"})}`, {}, A.token);
  t.falsy(r.errors, JSON.stringify(r.errors));
  t.is(r.data.rows.totalCount, 1);
  t.is(r.data.rows.rows[0].name, "Ann");
  const empty = await gql(stack.url, `query{rows(relation:"plain", where:{name:"nobody"})}`, {}, A.token);
  t.deepEqual(empty.data.rows.rows, []);
  await psqlA.query("drop policy p on t_rls; create policy p on t_rls using (true) with check (true)");
  const c = await gql(stack.url, "{tables(exactCounts:true){nodes{name exactRows}}}", {}, A.token);
  t.falsy(c.errors, JSON.stringify(c.errors));
  const byName = Object.fromEntries(c.data.tables.nodes.map((x: any) => [x.name, x.exactRows]));
  t.is(byName.plain, "2");
  t.is(byName.t_rls, "1");
  const fns = await db.admin.query("select count(*)::int as n from pg_proc where pronamespace = 'mallory'::regnamespace and proname like 'tdc_fn_%'");
  t.is(fns.rows[0].n, 0);
});
