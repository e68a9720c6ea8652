import test from "ava";
import { gzipSync } from "node:zlib";
import pg from "pg";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { startStack, gql, signUp, type Stack, type TestUser } from "./helpers/stack.ts";
import { eventually } from "./helpers/wait.ts";
import { config } from "../server/config.ts";

let db: TestDb;
let stack: Stack;
let alice: TestUser;
let bob: TestUser;
let channelId: number;

const PEOPLE = [
  { name: "id", type: "integer", primaryKey: true },
  { name: "name", type: "text", nullable: false },
  { name: "born", type: "date" },
  { name: "score", type: "numeric(6,2)" },
  { name: "active", type: "boolean" },
];

async function define(user: TestUser, name: string, columns: object[]) {
  const r = await gql(stack.url, `mutation($n:String!,$c:[ColumnSpecInput]!){defineTable(input:{name:$n,columns:$c}){table{name}}}`, { n: name, c: columns }, user.token);
  if (r.errors) throw new Error(JSON.stringify(r.errors));
}

async function imp(table: string, body: BodyInit | null, query = "", opts: { token?: string | null; headers?: Record<string, string> } = {}) {
  const token = opts.token === undefined ? alice.token : opts.token;
  const r = await fetch(`${stack.url}/tables/${encodeURIComponent(table)}/import${query ? "?" + query : ""}`, {
    method: "POST", body, duplex: "half",
    headers: { "content-type": "text/csv", ...(token ? { authorization: `Bearer ${token}` } : {}), ...opts.headers },
  } as RequestInit);
  const text = await r.text();
  let json: any = null;
  try { json = JSON.parse(text); } catch { /* not json */ }
  return { status: r.status, body: json, text };
}

/** Content fingerprint of a table (as the superuser): any change shows. */
async function snapshot(schema: string, table: string) {
  const { rows } = await db.admin.query(`select count(*)::int as n, md5(coalesce(string_agg(t::text, '|' order by t::text), '')) as h from ${schema}.${table} t`);
  return rows[0];
}

async function events(type?: string) {
  const { rows } = await db.admin.query("select type, data from app_private.events where channel_id = $1 and ($2::text is null or type = $2) order by seq", [channelId, type ?? null]);
  return rows;
}

test.before(async () => {
  db = await createTestDb();
  stack = await startStack(db, { pushpin: true });
  alice = await signUp(stack.url);
  bob = await signUp(stack.url);
  await define(alice, "people", PEOPLE);
  // The channel API belongs to the realtime capability; a channel row made directly lets us see events.
  const c = await db.admin.query("insert into app_public.channels (user_id, name) values ($1, 'imports') returning id", [alice.id]);
  channelId = c.rows[0].id;
  await db.admin.query("insert into app_public.channel_sources (channel_id, kind) values ($1, 'imports')", [channelId]);
  const r = await imp("people", "id,name,born,score,active\n1,Ada,1815-12-10,99.5,true\n2,Grace,1906-12-09,98,false\n");
  if (r.status !== 200) throw new Error(`seed import failed: ${r.text}`);
});
test.after.always(async () => {
  await stack?.stop();
  await db?.drop();
});

test.serial("an import through Pushpin appends rows, answers {table, rows, bytes, ms}, is recorded and emits events", async (t) => {
  const before = (await events()).length;
  const body = "id,name,born,score,active\n3,Linus,1969-12-28,70.25,true\n4,Barbara,,,\n";
  const r = await imp("people", body);
  t.is(r.status, 200, r.text);
  t.is(r.body.table, "people");
  t.is(r.body.rows, 2);
  t.is(r.body.bytes, Buffer.byteLength(body));
  t.true(Number.isInteger(r.body.ms));
  const { rows } = await db.admin.query(`select id, name, born::text, score::text, active from ${alice.handle}.people where id >= 3 order by id`);
  t.deepEqual(rows, [
    { id: 3, name: "Linus", born: "1969-12-28", score: "70.25", active: true },
    { id: 4, name: "Barbara", born: null, score: null, active: null },
  ]);
  const list = await gql(stack.url, `{ imports(orderBy: ID_DESC, first: 1) { nodes { id tableName mode status rows bytes durationMs error } } }`, {}, alice.token);
  t.like(list.data.imports.nodes[0], { id: String(r.body.importId), tableName: "people", mode: "append", status: "succeeded", rows: "2", bytes: String(Buffer.byteLength(body)), error: null });
  const ev = (await events()).slice(before);
  t.deepEqual(ev.map((e) => e.type), ["import.started", "import.finished"]);
  t.like(ev[1].data, { importId: r.body.importId, table: "people", rows: 2 });
});
