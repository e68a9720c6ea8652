/**
 * Channels through GraphQL and SQL: the API and its errors, opt-in row events
 * (trigger installed/removed with the sources), pulling events, retention,
 * and what user B cannot do to user A's channels.
 */
import test from "ava";
import { createTestDb, sqlstate, type TestDb } from "./helpers/db.ts";
import { startStack, signUp, gql, errCode, type Stack, type TestUser } from "./helpers/stack.ts";
import { asUser, createChannel, emitJobEvents, useJobFixtures } from "./helpers/realtime.ts";

let db: TestDb;
let stack: Stack;
let a: TestUser;
let b: TestUser;

const EVENTS = `query($c: String!, $after: BigInt, $first: Int){ events(channel: $c, after: $after, first: $first) { seq type data } }`;

async function triggersOn(schema: string, table: string): Promise<string[]> {
  const { rows } = await db.admin.query(
    `select t.tgname from pg_trigger t join pg_class c on c.oid = t.tgrelid join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = $1 and c.relname = $2 and not t.tgisinternal order by 1`, [schema, table]);
  return rows.map((r) => r.tgname);
}
async function channelCount(): Promise<number> {
  return Number((await db.admin.query("select count(*) from app_public.channels")).rows[0].count);
}

test.before(async () => {
  db = await createTestDb();
  useJobFixtures(db);
  stack = await startStack(db);
  a = await signUp(stack.url);
  b = await signUp(stack.url);
  await asUser(db, a, `create table ${a.handle}.items (id int primary key, title text, body text, tags jsonb)`);
  await asUser(db, a, `create table ${a.handle}.notes (id int primary key, note text)`);
  await asUser(db, b, `create table ${b.handle}.secret (id int primary key, v text)`);
});
test.after.always(async () => {
  await stack?.stop();
  await db?.drop();
});

test.serial("createChannel on a table installs the row trigger; insert/update/delete arrive as events, in order", async (t) => {
  t.deepEqual(await triggersOn(a.handle, "items"), []);
  const r = await createChannel(stack.url, a, "items", [{ kind: "table", name: "items" }]);
  t.falsy(r.errors, JSON.stringify(r.errors));
  t.is(r.data.createChannel.channel.name, "items");
  t.is(r.data.createChannel.channel.retentionCount, 100000);
  t.is(r.data.createChannel.channel.retention.days, 7);
  t.deepEqual(await triggersOn(a.handle, "items"), ["_900_tdc_row_events"]);

  const big = "x".repeat(5000);
  await asUser(db, a, `insert into ${a.handle}.items values (1, 'one', $1, '{"k": [1, 2]}')`, [big]);
  await asUser(db, a, `update ${a.handle}.items set title = 'uno' where id = 1`);
  await asUser(db, a, `delete from ${a.handle}.items where id = 1`);
  await asUser(db, a, `insert into ${a.handle}.notes values (1, 'not a source')`);

  const e = await gql(stack.url, EVENTS, { c: "items" }, a.token);
  t.falsy(e.errors, JSON.stringify(e.errors));
  const evs = e.data.events;
  t.deepEqual(evs.map((x: any) => [x.seq, x.type]), [["1", "row.inserted"], ["2", "row.updated"], ["3", "row.deleted"]]);
  t.deepEqual(evs[0].data.key, { id: 1 });
  t.is(evs[0].data.op, "insert");
  t.is(evs[0].data.row.title, "one");
  t.deepEqual(evs[0].data.row.tags, { k: [1, 2] });
  t.is(evs[0].data.row.body.length, 1000, "large values are truncated");
  t.deepEqual(evs[0].data.truncated, ["body"]);
  t.deepEqual(evs[1].data.changed, ["title"]);
  t.is(evs[1].data.row.title, "uno");
  t.is(evs[2].data.row.title, "uno", "a delete carries the old row");

  const page = await gql(stack.url, EVENTS, { c: "items", after: "1", first: 1 }, a.token);
  t.deepEqual(page.data.events.map((x: any) => x.seq), ["2"]);
});

test.serial("bad inputs fail with stable codes and change nothing", async (t) => {
  const before = await channelCount();
  const cases: Array<[string, unknown[], string, Record<string, unknown>?]> = [
    ["Bad Name", [{ kind: "table", name: "items" }], "TDC01"],
    ["items", [{ kind: "table", name: "notes" }], "TDC02"],
    ["c1", [], "TDC04"],
    ["c1", [{ kind: "tables", name: "items" }], "TDC04"],
    ["c1", [{ kind: "table" }], "TDC04"],
    ["c1", [{ kind: "imports", name: "x" }], "TDC04"],
    ["c1", [{ kind: "table", name: "items", events: ["view.refreshed"] }], "TDC04"],
    ["c1", [{ kind: "table", name: "items", events: [] }], "TDC04"],
    ["c1", [{ kind: "table", name: "items" }, { kind: "table", name: "items" }], "TDC04"],
    ["c1", [{ kind: "table", name: "nope" }], "TDC05"],
    ["c1", [{ kind: "table", name: "secret" }], "TDC05"],  // B's table name: not in A's schema
    ["c1", [{ kind: "table", name: "notes" }, { kind: "table", name: "nope" }], "TDC05"],
    ["c1", [{ kind: "table", name: "notes" }], "TDC06", { retentionCount: 0 }],
    ["c1", [{ kind: "table", name: "notes" }], "TDC06", { retention: { seconds: 1 } }],
  ];
  for (const [name, sources, code, extra] of cases) {
    const r = await createChannel(stack.url, a, name, sources, extra);
    t.is(errCode(r), code, `${name} ${JSON.stringify(sources)} ${JSON.stringify(extra ?? {})}: ${JSON.stringify(r.errors)}`);
  }
  // Job and view sources must name the caller's own job / view (a table is not a view).
  const viaGql = (sources: unknown) => gql(stack.url, `mutation($s:[ChannelSourceSpecInput]!){ createChannel(input:{name:"c1", sources:$s}) { channel { id } } }`, { s: sources }, a.token);
  t.is(errCode(await viaGql([{ kind: "job", name: "nojob" }])), "TDC05");
  t.is(errCode(await viaGql([{ kind: "view", name: "items" }])), "TDC05");
  t.is(await channelCount(), before);
  t.deepEqual(await triggersOn(a.handle, "notes"), [], "no trigger left behind by a failed create");
  t.is(errCode(await gql(stack.url, EVENTS, { c: "nope" }, a.token)), "TDC03");
  t.is(errCode(await gql(stack.url, EVENTS, { c: "items", first: 0 }, a.token)), "TDC06");
  t.is(errCode(await gql(stack.url, EVENTS, { c: "items", first: 1001 }, a.token)), "TDC06");
  t.is(errCode(await gql(stack.url, EVENTS, { c: "items", after: "-1" }, a.token)), "TDC06");
  t.is(errCode(await gql(stack.url, EVENTS, { c: "items" })), "42501", "anonymous may not call events");
  t.is(errCode(await gql(stack.url, `mutation{ dropChannel(input:{name:"nope"}){ success } }`, {}, a.token)), "TDC03");
  t.is(errCode(await gql(stack.url, `mutation{ alterChannel(input:{name:"nope", newName:"x"}){ channel { id } } }`, {}, a.token)), "TDC03");
  t.is(errCode(await createChannel(stack.url, a, "c1", [{ kind: "table", name: "items" }])), undefined);
  t.is(errCode(await gql(stack.url, `mutation{ alterChannel(input:{name:"c1", newName:"items"}){ channel { id } } }`, {}, a.token)), "TDC02");
  t.is(errCode(await gql(stack.url, `mutation{ alterChannel(input:{name:"c1", sources:[{kind:"table",name:"nope"}]}){ channel { id } } }`, {}, a.token)), "TDC05");
  const src = await db.admin.query("select s.kind, s.name from app_public.channel_sources s join app_public.channels c on c.id = s.channel_id where c.name = 'c1'");
  t.deepEqual(src.rows, [{ kind: "table", name: "items" }], "a failed alter keeps the old sources");
  await gql(stack.url, `mutation{ dropChannel(input:{name:"c1"}){ success } }`, {}, a.token);
});

test.serial("alterChannel moves the trigger with the sources; dropChannel removes it and the events", async (t) => {
  t.falsy((await createChannel(stack.url, a, "moving", [{ kind: "table", name: "notes", events: ["row.inserted"] }])).errors);
  t.deepEqual(await triggersOn(a.handle, "notes"), ["_900_tdc_row_events"]);
  await asUser(db, a, `insert into ${a.handle}.notes values (10, 'x')`);
  await asUser(db, a, `update ${a.handle}.notes set note = 'y' where id = 10`); // filtered out: inserts only
  const e1 = await gql(stack.url, EVENTS, { c: "moving" }, a.token);
  t.deepEqual(e1.data.events.map((x: any) => x.type), ["row.inserted"]);

  const r = await gql(stack.url, `mutation{ alterChannel(input:{name:"moving", newName:"moved", retentionCount: 50, sources:[{kind:"imports"}]}){ channel { name retentionCount } } }`, {}, a.token);
  t.falsy(r.errors, JSON.stringify(r.errors));
  t.deepEqual(r.data.alterChannel.channel, { name: "moved", retentionCount: 50 });
  t.deepEqual(await triggersOn(a.handle, "notes"), [], "no channel uses notes any more");
  t.deepEqual(await triggersOn(a.handle, "items"), ["_900_tdc_row_events"], "items is still used by another channel");
  t.is((await gql(stack.url, EVENTS, { c: "moved" }, a.token)).data.events.length, 1, "stored events are kept");

  const d = await gql(stack.url, `mutation{ dropChannel(input:{name:"items"}){ success } }`, {}, a.token);
  t.true(d.data.dropChannel.success);
  t.deepEqual(await triggersOn(a.handle, "items"), []);
  t.is(errCode(await gql(stack.url, EVENTS, { c: "items" }, a.token)), "TDC03");
  const left = await db.admin.query("select count(*) from app_private.events e left join app_public.channels c on c.id = e.channel_id where c.id is null");
  t.is(Number(left.rows[0].count), 0);
  // Row writes keep working without the trigger.
  await asUser(db, a, `insert into ${a.handle}.items values (2, 'two', null, null)`);
  t.pass();
});

test.serial("B sees none of A's channels and cannot pull, alter, drop or inject into them", async (t) => {
  t.falsy((await createChannel(stack.url, a, "private", [{ kind: "job", name: "nightly" }])).errors);
  await emitJobEvents(db, a.id, "nightly", 1, 3);
  const list = await gql(stack.url, `{ channels { nodes { name } } }`, {}, b.token);
  t.deepEqual(list.data.channels.nodes, []);
  t.is(errCode(await gql(stack.url, EVENTS, { c: "private" }, b.token)), "TDC03");
  t.is(errCode(await gql(stack.url, `mutation{ dropChannel(input:{name:"private"}){ success } }`, {}, b.token)), "TDC03");
  t.is(errCode(await gql(stack.url, `mutation{ alterChannel(input:{name:"private", newName:"mine"}){ channel { id } } }`, {}, b.token)), "TDC03");
  // B's own SQL: emit_event and the log are out of reach.
  t.is(await sqlstate(asUser(db, b, `select app_hidden.emit_event($1, 'job', 'nightly', 'job.run_succeeded', '{}')`, [a.id])), "42501");
  t.is(await sqlstate(asUser(db, b, "select * from app_private.events")), "42501");
  t.is(await sqlstate(asUser(db, b, "insert into app_private.events (channel_id, seq, type, data) values (1, 99, 'x', '{}')")), "42501");
  t.is(await sqlstate(asUser(db, b, "update app_public.channels set user_id = user_id")), "42501");
  t.is(await sqlstate(asUser(db, b, "select app_private.prune_events()")), "42501");
  // A table source of B never feeds A, even under A's table name: events are keyed by the owner.
  await asUser(db, b, `create table ${b.handle}.items (id int primary key)`);
  t.falsy((await createChannel(stack.url, b, "bitems", [{ kind: "table", name: "items" }])).errors);
  await asUser(db, b, `insert into ${b.handle}.items values (1)`);
  const mine = await gql(stack.url, EVENTS, { c: "private" }, a.token);
  t.deepEqual(mine.data.events.map((x: any) => x.seq), ["1", "2", "3"]);
  t.is((await gql(stack.url, EVENTS, { c: "bitems" }, b.token)).data.events.length, 1);
});

test.serial("the row trigger never runs a user's code as the owner (user-defined cast to json is not used)", async (t) => {
  await asUser(db, a, `create type ${a.handle}.mood as enum ('ok', 'meh')`);
  await asUser(db, a, `create function ${a.handle}.mood_json(${a.handle}.mood) returns json language plpgsql as
    $$ begin raise exception 'user cast ran as %', current_user; end $$`);
  await asUser(db, a, `create cast (${a.handle}.mood as json) with function ${a.handle}.mood_json(${a.handle}.mood)`);
  await asUser(db, a, `create table ${a.handle}.moods (id int primary key, m ${a.handle}.mood)`);
  // The cast is real: converting the value to json as A runs it.
  t.is(await sqlstate(asUser(db, a, `select 'ok'::${a.handle}.mood::json`)), "P0001");
  t.falsy((await createChannel(stack.url, a, "moods", [{ kind: "table", name: "moods" }])).errors);
  await asUser(db, a, `insert into ${a.handle}.moods values (1, 'meh')`);
  const e = await gql(stack.url, EVENTS, { c: "moods" }, a.token);
  t.deepEqual(e.data.events[0].data.row, { id: 1, m: "meh" });
});

test.serial("retention: prune keeps the newest retentionCount; pulling from before it is TDC08", async (t) => {
  t.falsy((await createChannel(stack.url, a, "short", [{ kind: "job", name: "tick" }], { retentionCount: 3 })).errors);
  await emitJobEvents(db, a.id, "tick", 1, 10, 10);
  const { rows } = await db.admin.query("select app_private.prune_events() as n");
  t.true(Number(rows[0].n) >= 7);
  t.is(errCode(await gql(stack.url, EVENTS, { c: "short", after: "0" }, a.token)), "TDC08");
  const e = await gql(stack.url, EVENTS, { c: "short", after: "7" }, a.token);
  t.deepEqual(e.data.events.map((x: any) => x.seq), ["8", "9", "10"]);
  // Time-based: events older than the retention go too.
  await db.admin.query("update app_public.channels set retention = '1 hour', retention_count = 1000 where name = 'short'");
  await db.admin.query("update app_private.events set created_at = now() - interval '2 hours' where seq <= 9 and channel_id = (select id from app_public.channels where name = 'short')");
  await db.admin.query("select app_private.prune_events()");
  t.deepEqual((await gql(stack.url, EVENTS, { c: "short", after: "9" }, a.token)).data.events.map((x: any) => x.seq), ["10"]);
  t.is(errCode(await gql(stack.url, EVENTS, { c: "short", after: "8" }, a.token)), "TDC08");
  // New events continue the sequence after pruning.
  await emitJobEvents(db, a.id, "tick", 11, 1);
  t.deepEqual((await gql(stack.url, EVENTS, { c: "short", after: "9" }, a.token)).data.events.map((x: any) => x.seq), ["10", "11"]);
});

test.serial("payloads over 256 KiB are replaced by a stub that says so", async (t) => {
  t.falsy((await createChannel(stack.url, a, "bigjob", [{ kind: "job", name: "big" }])).errors);
  await db.admin.query(`select app_hidden.emit_event($1, 'job', 'big', 'job.run_failed', jsonb_build_object('log', repeat('y', 300000)))`, [a.id]);
  const e = await gql(stack.url, EVENTS, { c: "bigjob" }, a.token);
  t.deepEqual(e.data.events[0].data, { truncated: true, bytes: 300011 });
});

test.serial("emit_event numbers per channel in commit order without gaps, even under concurrent emitters", async (t) => {
  t.falsy((await createChannel(stack.url, a, "race", [{ kind: "job", name: "r" }])).errors);
  // A transaction that emits and then rolls back gives its number back.
  const c = await db.admin.connect();
  await c.query("begin");
  await c.query(`select app_hidden.emit_event($1, 'job', 'r', 'job.run_failed', '{}')`, [a.id]);
  await c.query("rollback");
  c.release();
  await Promise.all(Array.from({ length: 3 }, (_, i) => emitJobEvents(db, a.id, "r", i * 100, 30)));
  const e = await gql(stack.url, EVENTS, { c: "race", first: 1000 }, a.token);
  t.deepEqual(e.data.events.map((x: any) => Number(x.seq)), Array.from({ length: 90 }, (_, i) => i + 1));
});
