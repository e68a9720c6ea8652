/**
 * Views through GraphQL: create (owned by the user, populated, optional
 * unique key), refresh with its run record, delta and event in one
 * transaction, failures recorded with their event, alter/rename/drop,
 * isolation between users, runQuery, and schedules refused clearly where
 * pg_cron is absent (this database is not cron.database_name).
 */
import test from "ava";
import { createTestDb, runAsUser, type TestDb } from "./helpers/db.ts";
import { startStack, gql, errCode, signUp, type Stack, type TestUser } from "./helpers/stack.ts";
import { config } from "../server/config.ts";

let db: TestDb;
let stack: Stack;
let alice: TestUser;
let bob: TestUser;

const asUser = (user: TestUser, sql: string) => runAsUser(db, user, sql);

const VIEW_FIELDS = "id name query columns rowCount lastRefreshedAt uniqueKey";
const REFRESH_FIELDS = "id status trigger rowCount durationMs added removed error startedAt finishedAt";

async function createView(user: TestUser, name: string, query: string, extra: Record<string, unknown> = {}) {
  return gql(stack.url, `mutation($i:CreateViewInput!){createView(input:$i){view{${VIEW_FIELDS}}}}`,
    { i: { name, query, ...extra } }, user.token);
}
async function refreshView(user: TestUser, name: string) {
  return gql(stack.url, `mutation($n:String!){refreshView(input:{name:$n}){refresh{${REFRESH_FIELDS}}}}`, { n: name }, user.token);
}
async function events(userId: string): Promise<Array<{ type: string; data: any }>> {
  const { rows } = await db.admin.query(`select e.type, e.data from app_private.events e join app_public.channels c on c.id = e.channel_id
    where c.user_id = $1 order by e.seq`, [userId]);
  return rows;
}
async function relation(user: TestUser, name: string) {
  const { rows } = await db.admin.query(`select c.relkind, c.relispopulated, pg_get_userbyid(c.relowner) as owner,
      (select count(*) from pg_index i where i.indrelid = c.oid and i.indisunique)::int as unique_indexes
    from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = $1 and c.relname = $2`, [user.handle, name]);
  return rows[0] ?? null;
}
const viewRows = async (user: TestUser) => (await db.admin.query("select name from app_public.views where user_id = $1 order by name", [user.id])).rows.map((r) => r.name);

test.before(async () => {
  config.userSqlTimeoutMs = 3000;
  db = await createTestDb();
  stack = await startStack(db);
  alice = await signUp(stack.url);
  bob = await signUp(stack.url);
  await asUser(alice, `create table sales (id int primary key, region text not null, amount numeric not null, divisor int not null default 1);
    insert into sales select i, 'r' || (i % 5), i, 1 from generate_series(1, 100) i;`);
  await db.admin.query(`with c as (insert into app_public.channels (user_id, name) values ($1, 'views') returning id)
    insert into app_public.channel_sources (channel_id, kind) select id, 'view' from c`, [alice.id]);
});
test.after.always(async () => {
  await stack?.stop();
  await db?.drop();
});

test.serial("createView: created in the user's schema, owned by their role, populated, with columns", async (t) => {
  const r = await createView(alice, "by_region", "select region, sum(amount) as total, count(*) as n from sales group by region", { uniqueKey: ["region"] });
  t.falsy(r.errors, JSON.stringify(r.errors));
  const v = r.data.createView.view;
  t.is(v.name, "by_region");
  t.is(v.rowCount, "5");
  t.deepEqual(v.uniqueKey, ["region"]);
  t.deepEqual(v.columns, [{ name: "region", type: "text" }, { name: "total", type: "numeric" }, { name: "n", type: "bigint" }]);
  t.truthy(v.lastRefreshedAt);
  t.deepEqual(await relation(alice, "by_region"), { relkind: "m", relispopulated: true, owner: alice.roleName, unique_indexes: 1 });
  // It is the user's own object: they read it directly (psql) as well.
  const { rows } = await db.admin.query(`select count(*)::int as n from ${alice.handle}.by_region`);
  t.is(rows[0].n, 5);
});

test.serial("createView refuses bad names, taken names and bad unique keys, creating nothing", async (t) => {
  const before = await viewRows(alice);
  t.is(errCode(await createView(alice, "Bad Name", "select 1")), "TDV01");
  t.is(errCode(await createView(alice, "by_region", "select 1")), "TDV02");
  t.is(errCode(await createView(alice, "sales", "select 1")), "TDV02"); // a table of theirs
  t.is(errCode(await createView(alice, "k1", "select region from sales", { uniqueKey: ["nope"] })), "TDV08");
  t.is(errCode(await createView(alice, "k2", "select region from sales", { uniqueKey: ["region"] })), "TDV08"); // not unique
  t.is(errCode(await createView(alice, "k3", "select region from sales", { uniqueKey: [] })), "TDV08");
  t.deepEqual(await viewRows(alice), before);
  for (const n of ["k1", "k2", "k3"]) t.is(await relation(alice, n), null, `${n} was not left behind`);
});

test.serial("refreshView: a run record and a view.refreshed event with the exact delta, in one transaction", async (t) => {
  await asUser(alice, `insert into sales values (101, 'r9', 50); update sales set amount = amount + 1 where id = 1;`);
  const r = await refreshView(alice, "by_region");
  t.falsy(r.errors, JSON.stringify(r.errors));
  const run = r.data.refreshView.refresh;
  t.like(run, { status: "succeeded", trigger: "manual", rowCount: "6", added: "2", removed: "1", error: null });
  t.true(run.durationMs >= 0);
  const ev = (await events(alice.id)).filter((e) => e.type === "view.refreshed").at(-1)!;
  t.like(ev.data, { view: "by_region", refreshId: Number(run.id), rowCount: 6, trigger: "manual" });
  t.deepEqual(ev.data.delta.removed, [{ region: "r1", total: 970, n: 20 }]);
  t.deepEqual(ev.data.delta.added.sort((a: any, b: any) => a.region.localeCompare(b.region)),
    [{ region: "r1", total: 971, n: 20 }, { region: "r9", total: 50, n: 1 }]);
  const listed = await gql(stack.url, `{views{nodes{name rowCount lastRefresh{id status}}}}`, {}, alice.token);
  t.deepEqual(listed.data.views.nodes.find((v: any) => v.name === "by_region"), { name: "by_region", rowCount: "6", lastRefresh: { id: run.id, status: "succeeded" } });
});

test.serial("a refresh that changes nothing reports an empty delta; a big one is summarised", async (t) => {
  const r = await refreshView(alice, "by_region");
  t.like(r.data.refreshView.refresh, { added: "0", removed: "0" });
  t.deepEqual((await events(alice.id)).at(-1)!.data.delta, { added: [], removed: [] });
  await db.admin.query("update app_private.settings set value = '3' where key = 'view_delta_limit'");
  try {
    await asUser(alice, "update sales set amount = amount * 2");
    const r2 = await refreshView(alice, "by_region");
    t.like(r2.data.refreshView.refresh, { status: "succeeded", added: "6", removed: "6" });
    t.deepEqual((await events(alice.id)).at(-1)!.data.delta, { truncated: true, added: 6, removed: 6 });
  } finally {
    await db.admin.query("update app_private.settings set value = '1000' where key = 'view_delta_limit'");
  }
});

test.serial("views with columns that have no equality (json) still get a delta", async (t) => {
  t.falsy((await createView(alice, "as_json", "select id, json_build_object('r', region) as j from sales where id <= 3")).errors);
  await asUser(alice, "update sales set region = 'zz' where id = 2");
  const r = await refreshView(alice, "as_json");
  t.like(r.data.refreshView.refresh, { status: "succeeded", added: "1", removed: "1" });
  t.deepEqual((await events(alice.id)).at(-1)!.data.delta, { added: [{ id: 2, j: { r: "zz" } }], removed: [{ id: 2, j: { r: "r2" } }] });
});

test.serial("a failing refresh is recorded with view.refresh_failed, and the view keeps its contents", async (t) => {
  t.falsy((await createView(alice, "ratios", "select id, amount / divisor as ratio from sales where id <= 10")).errors);
  await asUser(alice, "update sales set divisor = 0 where id = 5");
  const r = await refreshView(alice, "ratios");
  t.like(r.data.refreshView.refresh, { status: "failed", rowCount: null, added: null });
  t.regex(r.data.refreshView.refresh.error, /division by zero/);
  const ev = (await events(alice.id)).at(-1)!;
  t.is(ev.type, "view.refresh_failed");
  t.like(ev.data, { view: "ratios", refreshId: Number(r.data.refreshView.refresh.id), trigger: "manual" });
  t.regex(ev.data.error, /division by zero/);
  const { rows } = await db.admin.query(`select count(*)::int as n from ${alice.handle}.ratios`);
  t.is(rows[0].n, 10);
  await asUser(alice, "update sales set divisor = 1 where id = 5");
});

test.serial("with a uniqueKey, refreshes run CONCURRENTLY: readers are not blocked; without one, a blocked refresh times out as a failed run", async (t) => {
  const reader = await db.admin.connect();
  try {
    await reader.query("begin");
    await reader.query(`select count(*) from ${alice.handle}.by_region`);
    await reader.query(`select count(*) from ${alice.handle}.as_json`);
    // Keyed: CONCURRENTLY takes an EXCLUSIVE lock, which the reader's ACCESS SHARE does not block.
    const keyed = await refreshView(alice, "by_region");
    t.is(keyed.data.refreshView.refresh.status, "succeeded");
    // Not keyed: a plain REFRESH needs ACCESS EXCLUSIVE and waits for the reader until the timeout.
    const plain = await refreshView(alice, "as_json");
    t.is(plain.data.refreshView.refresh.status, "failed");
    t.regex(plain.data.refreshView.refresh.error, /time limit/);
    t.is((await events(alice.id)).at(-1)!.type, "view.refresh_failed");
  } finally {
    await reader.query("rollback");
    reader.release();
  }
});

test.serial("alterView replaces the query atomically, keeping the key; a failing new query changes nothing", async (t) => {
  const r = await gql(stack.url, `mutation{alterView(input:{name:"by_region", query:"select region, max(amount) as top from sales group by region"}){view{${VIEW_FIELDS}}}}`, {}, alice.token);
  t.falsy(r.errors, JSON.stringify(r.errors));
  t.deepEqual(r.data.alterView.view.columns, [{ name: "region", type: "text" }, { name: "top", type: "numeric" }]);
  t.deepEqual(r.data.alterView.view.uniqueKey, ["region"]);
  t.like(await relation(alice, "by_region"), { owner: alice.roleName, unique_indexes: 1 });
  const before = (await db.admin.query("select query, updated_at from app_public.views where name = 'by_region'")).rows[0];
  const bad = await gql(stack.url, `mutation{alterView(input:{name:"by_region", query:"select 1 / 0 as region"}){view{id}}}`, {}, alice.token);
  t.is(errCode(bad), "22012");
  const lost = await gql(stack.url, `mutation{alterView(input:{name:"by_region", query:"select 1 as other"}){view{id}}}`, {}, alice.token);
  t.is(errCode(lost), "TDV08"); // the new query lacks the uniqueKey column
  t.deepEqual((await db.admin.query("select query, updated_at from app_public.views where name = 'by_region'")).rows[0], before);
  const { rows } = await db.admin.query(`select count(*)::int as n from ${alice.handle}.by_region`);
  t.is(rows[0].n, 7); // r0..r4, r9, and zz (id 2 moved there above)
  t.is(errCode(await gql(stack.url, `mutation{alterView(input:{name:"nope", query:"select 1"}){view{id}}}`, {}, alice.token)), "TDV03");
});

test.serial("the refresh and its event commit together: if the event cannot be written, the refresh is undone too", async (t) => {
  await db.admin.query(`create function public.tg_refuse() returns trigger language plpgsql as $$ begin raise exception 'event log unavailable'; end $$;
    create trigger _100_refuse before insert on app_private.events for each row execute function public.tg_refuse()`);
  try {
    const runsBefore = (await db.admin.query("select count(*)::int as n from app_public.view_refreshes")).rows[0].n;
    const contentsBefore = (await db.admin.query(`select md5(string_agg(r::text, ',' order by r.region)) as h from ${alice.handle}.by_region r`)).rows[0].h;
    await asUser(alice, "update sales set amount = amount + 1000 where id = 7");
    const r = await refreshView(alice, "by_region");
    t.truthy(r.errors);
    t.is((await db.admin.query("select count(*)::int as n from app_public.view_refreshes")).rows[0].n, runsBefore);
    t.is((await db.admin.query(`select md5(string_agg(r::text, ',' order by r.region)) as h from ${alice.handle}.by_region r`)).rows[0].h, contentsBefore);
  } finally {
    await db.admin.query("drop trigger _100_refuse on app_private.events; drop function public.tg_refuse()");
  }
  const ok = await refreshView(alice, "by_region");
  t.like(ok.data.refreshView.refresh, { status: "succeeded", added: "1", removed: "1" });
});

test.serial("renameView and dropView (dependent objects need cascade)", async (t) => {
  await db.admin.query(`insert into app_public.channel_sources (channel_id, kind, name)
    select id, 'view', 'ratios' from app_public.channels where user_id = $1`, [alice.id]);
  const r = await gql(stack.url, `mutation{renameView(input:{name:"ratios", newName:"ratios2"}){view{name}}}`, {}, alice.token);
  t.is(r.data.renameView.view.name, "ratios2");
  t.deepEqual((await db.admin.query("select name from app_public.channel_sources where kind = 'view' and name like 'ratios%'")).rows, [{ name: "ratios2" }],
    "the channel source naming the view follows the rename");
  t.truthy(await relation(alice, "ratios2"));
  t.is(await relation(alice, "ratios"), null);
  t.is(errCode(await gql(stack.url, `mutation{renameView(input:{name:"ratios2", newName:"sales"}){view{name}}}`, {}, alice.token)), "TDV02");
  await asUser(alice, "create view on_ratios as select * from ratios2");
  const blocked = await gql(stack.url, `mutation{dropView(input:{name:"ratios2"}){view{name}}}`, {}, alice.token);
  t.is(errCode(blocked), "TDV11");
  t.truthy(await relation(alice, "ratios2"));
  const dropped = await gql(stack.url, `mutation{dropView(input:{name:"ratios2", cascade:true}){view{name}}}`, {}, alice.token);
  t.is(dropped.data.dropView.view.name, "ratios2");
  t.is(await relation(alice, "ratios2"), null);
  t.is(await relation(alice, "on_ratios"), null);
  t.false((await viewRows(alice)).includes("ratios2"));
  t.is((await db.admin.query("select count(*)::int as n from app_public.view_refreshes where view_name = 'ratios'")).rows[0].n, 0);
});

test.serial("users see and touch only their own views", async (t) => {
  const listed = await gql(stack.url, `{views{nodes{name}} viewRefreshes{nodes{id}}}`, {}, bob.token);
  t.deepEqual(listed.data.views.nodes, []);
  t.deepEqual(listed.data.viewRefreshes.nodes, []);
  t.is(errCode(await refreshView(bob, "by_region")), "TDV03");
  t.is(errCode(await gql(stack.url, `mutation{dropView(input:{name:"by_region"}){view{name}}}`, {}, bob.token)), "TDV03");
  // Bob's view of the same name is his own.
  t.falsy((await createView(bob, "by_region", "select 1 as a")).errors);
  t.is((await relation(bob, "by_region")).owner, bob.roleName);
  const anon = await gql(stack.url, `mutation{createView(input:{name:"x", query:"select 1"}){view{id}}}`);
  t.truthy(errCode(anon));
});

test.serial("runQuery: columns, rows as arrays, limit and truncation", async (t) => {
  const r = await gql(stack.url, `query($q:String!,$l:Int){runQuery(query:$q, limit:$l){columns rows truncated}}`,
    { q: "select id, region, amount from sales where id <= 3 order by id", l: 2 }, alice.token);
  t.deepEqual(r.data.runQuery, {
    columns: [{ name: "id", type: "integer" }, { name: "region", type: "text" }, { name: "amount", type: "numeric" }],
    rows: [[1, "r1", 4], [2, "zz", 4]], truncated: true,
  });
  const all = await gql(stack.url, `{runQuery(query:"select count(*) as n from by_region"){rows truncated}}`, {}, alice.token);
  t.deepEqual(all.data.runQuery, { rows: [[7]], truncated: false });
  t.is(errCode(await gql(stack.url, `{runQuery(query:"select 1", limit: 0){rows}}`, {}, alice.token)), "TDV10");
  t.is(errCode(await gql(stack.url, `{runQuery(query:"select 1 as a, 2 as a"){rows}}`, {}, alice.token)), "TDV14");
});

test.serial("schedules need pg_cron: a clear TDJ01 here, and createView with a schedule creates nothing", async (t) => {
  const r = await createView(alice, "scheduled", "select 1 as a", { refreshSchedule: "* * * * *" });
  t.is(errCode(r), "TDJ01");
  t.regex(r.errors![0].message, /pg_cron/);
  t.is(await relation(alice, "scheduled"), null);
  t.false((await viewRows(alice)).includes("scheduled"));
  const s = await gql(stack.url, `mutation{scheduleRefresh(input:{view:"by_region", schedule:"* * * * *"}){job{id}}}`, {}, alice.token);
  t.is(errCode(s), "TDJ01");
  t.is((await db.admin.query("select count(*)::int as n from app_public.jobs")).rows[0].n, 0);
});
