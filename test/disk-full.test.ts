/**
 * Disk full on the events path (simulated: the event log's insert fails with
 * SQLSTATE 53100, as Postgres reports "No space left on device"). A write that
 * would emit an event fails as a whole with a clear error: the row is not
 * written, no event, no sequence number used; afterwards everything works and
 * the channel's numbering has no gap.
 */
import test from "ava";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { startStack, gql, signUp, type Stack, type TestUser } from "./helpers/stack.ts";

let db: TestDb;
let stack: Stack;
let u: TestUser;

test.before(async () => {
  db = await createTestDb();
  stack = await startStack(db);
  u = await signUp(stack.url, "diskfull");
  const t = await gql(stack.url, `mutation{defineTable(input:{name:"readings",columns:[{name:"id",type:"integer",primaryKey:true},{name:"v",type:"numeric"}]}){table{name}}}`, {}, u.token);
  if (t.errors) throw new Error(JSON.stringify(t.errors));
  const c = await gql(stack.url, `mutation{createChannel(input:{name:"live",sources:[{kind:"table",name:"readings"}]}){channel{name}}}`, {}, u.token);
  if (c.errors) throw new Error(JSON.stringify(c.errors));
});
test.after.always(async () => {
  await stack?.stop();
  await db?.drop();
});

const state = async () => (await db.admin.query(`
  select (select count(*) from diskfull.readings)::int as rows,
         (select count(*) from app_private.events)::int as events,
         (select coalesce(max(last_seq), 0) from app_private.channel_heads)::int as head`)).rows[0];

async function diskFull(on: boolean) {
  if (on) {
    await db.admin.query(`create or replace function public.tdc_test_disk_full() returns trigger language plpgsql as $$
      begin raise exception 'could not extend file "base/16384/16999": No space left on device' using errcode = '53100'; end $$`);
    await db.admin.query("create trigger tdc_test_disk_full before insert on app_private.events for each row execute function public.tdc_test_disk_full()");
  } else {
    await db.admin.query("drop trigger tdc_test_disk_full on app_private.events");
  }
}

test.serial("an import into a table feeding a channel fails cleanly (507 TDX07) and writes nothing", async (t) => {
  const before = await state();
  await diskFull(true);
  try {
    const r = await fetch(stack.url + "/tables/readings/import", {
      method: "POST", headers: { authorization: `Bearer ${u.token}`, "content-type": "text/csv" }, body: "id,v\n1,1.5\n2,2.5\n",
    });
    const body = await r.json();
    t.is(r.status, 507, JSON.stringify(body));
    t.is(body.error.code, "TDX07");
    t.regex(body.error.message, /disk space/);
  } finally {
    await diskFull(false);
  }
  t.deepEqual(await state(), before, "no rows, no events, no sequence number used");
  const { rows } = await db.admin.query("select status from app_public.imports order by id desc limit 1");
  t.is(rows[0].status, "failed", "the import is recorded as failed, not left running");
});

test.serial("a direct write (psql) fails with 53100 and leaves no partial state; afterwards numbering continues gap-free", async (t) => {
  const before = await state();
  await diskFull(true);
  const c = await db.admin.connect();
  try {
    await c.query("begin");
    await c.query("select set_config('role', $1, true)", [u.roleName]);
    const err = await c.query("insert into diskfull.readings values (10, 1), (11, 2)").then(() => null, (e) => e);
    t.is(err?.code, "53100");
    await c.query("rollback");
  } finally {
    c.release();
    await diskFull(false);
  }
  t.deepEqual(await state(), before);
  const ok = await fetch(stack.url + "/tables/readings/import", {
    method: "POST", headers: { authorization: `Bearer ${u.token}`, "content-type": "text/csv" }, body: "id,v\n20,1\n21,2\n",
  });
  t.is(ok.status, 200, await ok.text());
  const { rows } = await db.admin.query("select array_agg(seq order by seq) as seqs from app_private.events");
  t.deepEqual(rows[0].seqs.map(Number), [before.head + 1, before.head + 2]);
});

test.serial("GraphQL: a mutation whose event cannot be written answers TDX07 and changes nothing", async (t) => {
  const v = await gql(stack.url, `mutation{createView(input:{name:"total",query:"select count(*) as n from readings"}){view{name}}}`, {}, u.token);
  t.falsy(v.errors);
  await gql(stack.url, `mutation{alterChannel(input:{name:"live",sources:[{kind:"table",name:"readings"},{kind:"view",name:"total"}]}){channel{name}}}`, {}, u.token);
  const before = await state();
  await diskFull(true);
  let r;
  try {
    r = await gql(stack.url, `mutation{refreshView(input:{name:"total"}){refresh{status}}}`, {}, u.token);
  } finally {
    await diskFull(false);
  }
  t.is(r.errors?.[0]?.extensions?.code, "TDX07", JSON.stringify(r));
  t.deepEqual(await state(), before);
  const { rows } = await db.admin.query("select count(*)::int as n from app_public.view_refreshes");
  t.is(rows[0].n, 0, "no refresh recorded when its event could not be");
});
