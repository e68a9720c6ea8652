import test from "ava";
import { gzipSync } from "node:zlib";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { startStack, gql, signUp, freePort, type Stack, type TestUser } from "./helpers/stack.ts";
import { spawnTs, waitForHttp } from "../server/devstack/processes.ts";
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

async function imp(table: string, body: BodyInit | null, query = "", opts: { token?: string | null; headers?: Record<string, string>; direct?: boolean } = {}) {
  const token = opts.token === undefined ? alice.token : opts.token;
  // Pushpin by default; `direct` talks to the origin (Pushpin drops Content-Encoding and holds back the start of a chunked body until a buffer-full or its end).
  const base = opts.direct ? `http://127.0.0.1:${stack.server.port}` : stack.url;
  const r = await fetch(`${base}/tables/${encodeURIComponent(table)}/import${query ? "?" + query : ""}`, {
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

/** Asserts an import is refused with `status`/`code` and that the table and the import log are left as they were. */
async function refused(t: any, table: string, body: BodyInit | null, query: string, status: number, code: string,
  extra: Record<string, unknown> = {}, opts: Parameters<typeof imp>[3] = {}) {
  const before = await snapshot(alice.handle, table);
  const r = await imp(table, body, query, opts);
  t.is(r.status, status, r.text);
  t.is(r.body?.error?.code, code, r.text);
  t.is(typeof r.body?.error?.message, "string");
  if (Object.keys(extra).length) t.like(r.body.error, extra);
  t.deepEqual(await snapshot(alice.handle, table), before, "the table is unchanged");
  return r;
}

const HEAD = "id,name,born,score,active\n";

test.serial("an empty body is refused (400 TDI01) and recorded as a failed import", async (t) => {
  const r = await refused(t, "people", "", "", 400, "TDI01");
  const { rows } = await db.admin.query("select status, error from app_public.imports where user_id = $1 order by id desc limit 1", [alice.id]);
  t.is(rows[0].status, "failed");
  t.is(rows[0].error.code, "TDI01");
  const failed = await events("import.failed");
  t.is(failed.at(-1).data.error.code, "TDI01");
  t.truthy(r);
});

test.serial("a header-only file is refused (422 TDI02)", async (t) => {
  await refused(t, "people", HEAD, "", 422, "TDI02");
  await refused(t, "people", "id,name", "", 422, "TDI02");
});

test.serial("a row with too many or too few columns is refused with its line (422 TDI07)", async (t) => {
  await refused(t, "people", HEAD + "10,Ok,,,\n11,Extra,,,,x\n", "", 422, "TDI07", { line: 3, pgCode: "22P04" });
  const r = await refused(t, "people", HEAD + "10,Ok,,,\n12,Short\n", "", 422, "TDI07", { line: 3 });
  t.regex(r.body.error.message, /missing data for column "born"/);
});

test.serial("an unknown or repeated header column is refused (422 TDI03)", async (t) => {
  await refused(t, "people", "id,name,email\n10,X,x@y\n", "", 422, "TDI03", { line: 1, column: "email" });
  await refused(t, "people", "id,name,name\n10,X,Y\n", "", 422, "TDI03", { line: 1, column: "name" });
});

test.serial("invalid UTF-8 is refused with its line (422 TDI09)", async (t) => {
  const body = Buffer.concat([Buffer.from(HEAD + "10,Ok,,,\n11,"), Buffer.from([0xff, 0xfe]), Buffer.from(",,,\n")]);
  await refused(t, "people", body, "", 422, "TDI09", { line: 3 });
});

test.serial("an unterminated quoted field is refused (422 TDI07)", async (t) => {
  const r = await refused(t, "people", HEAD + '10,"Ok,,,\n11,B,,,\n', "", 422, "TDI07");
  t.regex(r.body.error.message, /unterminated CSV quoted field/);
});

test.serial("a value of the wrong type is refused with line, column and value (422 TDI08)", async (t) => {
  await refused(t, "people", HEAD + "10,Ok,,,\n11,Bad,1990-02-31,,\n", "", 422, "TDI08", { line: 3, column: "born", value: "1990-02-31" });
  const long = "x".repeat(500);
  const r = await refused(t, "people", HEAD + `12,Bad,,${long},\n`, "", 422, "TDI08", { line: 2, column: "score" });
  t.true(r.body.error.value.length <= 101, "the offending value is truncated");
});

test.serial("a constraint violation is refused (422 TDI10): not null, duplicate key", async (t) => {
  await refused(t, "people", HEAD + "10,,,,\n", "", 422, "TDI10", { column: "name", pgCode: "23502" });
  await refused(t, "people", HEAD + "1,Again,,,\n", "", 422, "TDI10", { pgCode: "23505" });
});

test.serial("an upload over the maximum size is refused (413 TDI06), declared or streamed", async (t) => {
  const saved = config.maxImportBytes;
  config.maxImportBytes = 1000;
  try {
    const big = HEAD + Array.from({ length: 100 }, (_, i) => `${100 + i},Name ${i},,,\n`).join("");
    await refused(t, "people", big, "", 413, "TDI06");
    // Chunked (no Content-Length): the cap applies while streaming.
    const enc = new TextEncoder();
    const stream = new ReadableStream({ start(c) { c.enqueue(enc.encode(big)); c.close(); } });
    await refused(t, "people", stream as any, "", 413, "TDI06", {}, { direct: true });
    // A small gzip that expands past the cap is refused as well.
    await refused(t, "people", gzipSync(big), "", 413, "TDI06", {}, { headers: { "content-encoding": "gzip" } });
  } finally {
    config.maxImportBytes = saved;
  }
});

test.serial("bad options, content types and encodings are refused before anything is read", async (t) => {
  await refused(t, "people", HEAD + "10,X,,,\n", "mode=upsert", 400, "TDI05");
  await refused(t, "people", HEAD + "10,X,,,\n", "delimiter=ab", 400, "TDI05");
  await refused(t, "people", HEAD + "10,X,,,\n", "header=maybe", 400, "TDI05");
  await refused(t, "people", HEAD + "10,X,,,\n", "bogus=1", 400, "TDI05");
  await refused(t, "people", HEAD + "10,X,,,\n", "encoding=KLINGON", 400, "TDI05");
  await refused(t, "people", HEAD + "10,X,,,\n", "", 415, "TDI13", {}, { headers: { "content-type": "application/json" } });
  await refused(t, "people", HEAD + "10,X,,,\n", "", 415, "TDI11", {}, { headers: { "content-encoding": "br" }, direct: true });
  await refused(t, "people", "not gzip at all", "", 400, "TDI11", {}, { headers: { "content-encoding": "gzip" }, direct: true });
  await refused(t, "people", Buffer.from([0x1f, 0x8b, 1, 2, 3]), "", 400, "TDI11");
});

test.serial("gzip bodies, a BOM, CRLF line ends, quoted fields and header order are handled", async (t) => {
  const csv = "\ufeffname,id,active\r\n\"Smith, \"\"Jo\"\"\",20,t\r\n\"multi\nline\",21,f\r\n";
  const r = await imp("people", gzipSync(Buffer.from(csv)), "", { headers: { "content-encoding": "gzip" } });
  t.is(r.status, 200, r.text);
  t.is(r.body.rows, 2);
  // Directly with the header too (Pushpin drops Content-Encoding; the gzip magic bytes are recognised).
  const d = await imp("people", gzipSync(Buffer.from("id,name\n22,Direct\n")), "", { headers: { "content-encoding": "gzip" }, direct: true });
  t.is(d.status, 200, d.text);
  const { rows } = await db.admin.query(`select id, name, active from ${alice.handle}.people where id in (20, 21) order by id`);
  t.deepEqual(rows, [{ id: 20, name: 'Smith, "Jo"', active: true }, { id: 21, name: "multi\nline", active: false }]);
  t.is((await db.admin.query(`select name from ${alice.handle}.people where id = 22`)).rows[0].name, "Direct");
});

test.serial("delimiter, quote, null, header=false and encoding options apply", async (t) => {
  let r = await imp("people", "30;'a;b';NULL;1.5;NULL\n", "header=false&delimiter=%3B&quote='&null=NULL");
  t.is(r.status, 200, r.text);
  r = await imp("people", Buffer.from("id,name\n31,Jos\xe9\n", "latin1"), "encoding=LATIN1");
  t.is(r.status, 200, r.text);
  r = await imp("people", "id\tname\n32\tTab\n", "delimiter=tab");
  t.is(r.status, 200, r.text);
  const { rows } = await db.admin.query(`select id, name, born, score::text from ${alice.handle}.people where id between 30 and 32 order by id`);
  t.deepEqual(rows, [{ id: 30, name: "a;b", born: null, score: "1.50" }, { id: 31, name: "José", born: null, score: null }, { id: 32, name: "Tab", born: null, score: null }]);
});

test.serial("mode=replace swaps the contents atomically: readers see the old rows until it commits", async (t) => {
  await define(alice, "swap", [{ name: "k", type: "integer" }]);
  t.is((await imp("swap", "k\n1\n2\n3\n")).status, 200);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const enc = new TextEncoder();
  const body = new ReadableStream({
    async start(c) {
      c.enqueue(enc.encode("k\n7\n8\n"));
      await gate;
      c.enqueue(enc.encode("9\n"));
      c.close();
    },
  });
  const pending = imp("swap", body as any, "mode=replace", { direct: true });
  // While the replacing import is open (old rows deleted inside its transaction), readers see the old rows, never an empty table.
  await eventually(async () => (await db.admin.query("select 1 from pg_stat_activity where query ilike 'copy %swap%from stdin%' and state = 'active'")).rowCount);
  const during = await db.admin.query(`select array_agg(k order by k) as ks from ${alice.handle}.swap`);
  t.deepEqual(during.rows[0].ks, [1, 2, 3]);
  release();
  const r = await pending;
  t.is(r.status, 200, r.text);
  t.is(r.body.rows, 3);
  const after = await db.admin.query(`select array_agg(k order by k) as ks from ${alice.handle}.swap`);
  t.deepEqual(after.rows[0].ks, [7, 8, 9]);
  // A failed replace keeps the old rows.
  await refused(t, "swap", "k\n10\nnope\n", "mode=replace", 422, "TDI08", { line: 3 });
  t.deepEqual((await db.admin.query(`select array_agg(k order by k) as ks from ${alice.handle}.swap`)).rows[0].ks, [7, 8, 9]);
});

test.serial("a long import emits import.progress (at most once a second) while the data flows", async (t) => {
  await define(alice, "slow", [{ name: "k", type: "integer" }]);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const enc = new TextEncoder();
  const body = new ReadableStream({
    async start(c) { c.enqueue(enc.encode("k\n1\n")); await gate; c.enqueue(enc.encode("2\n")); c.close(); },
  });
  const before = (await events("import.progress")).length;
  const pending = imp("slow", body as any, "", { direct: true });
  const progress = await eventually(async () => {
    const ev = (await events("import.progress")).slice(before);
    return ev.length >= 1 ? ev : null;
  }, 10_000) as any[];
  release();
  const r = await pending;
  t.is(r.status, 200, r.text);
  t.is(progress[0].data.table, "slow");
  t.true(progress[0].data.bytes >= 4);
  const ev = (await events()).filter((e) => e.data.table === "slow").map((e) => e.type);
  t.is(ev[0], "import.started");
  t.is(ev.at(-1), "import.finished");
});

test.serial("create=true makes the table from the file, inferring types over every row", async (t) => {
  const rows = ["ID,Big Number,Price,Ratio,Active,Day,At,Uid,Doc,Note,Late Text,Empty"];
  for (let i = 0; i < 2000; i++) {
    rows.push([i, 3_000_000_000 + i, `${i}.25`, `${i}e-3`, i % 2 ? "true" : "f", "2024-02-29", "2024-01-02T03:04:05Z",
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `"{""a"":${i}}"`, "hello", i === 1999 ? "not a number" : String(i), ""].join(","));
  }
  const r = await imp("inferred", rows.join("\n") + "\n", "create=true");
  t.is(r.status, 200, r.text);
  t.is(r.body.rows, 2000);
  t.true(r.body.created);
  const { rows: cols } = await db.admin.query(
    "select column_name, data_type from information_schema.columns where table_schema = $1 and table_name = 'inferred' order by ordinal_position", [alice.handle]);
  t.deepEqual(cols.map((c) => [c.column_name, c.data_type]), [
    ["id", "integer"], ["big_number", "bigint"], ["price", "numeric"], ["ratio", "double precision"], ["active", "boolean"],
    ["day", "date"], ["at", "timestamp with time zone"], ["uid", "uuid"], ["doc", "jsonb"], ["note", "text"],
    ["late_text", "text"], ["empty", "text"],
  ]);
  const owner = await db.admin.query("select tableowner from pg_tables where schemaname = $1 and tablename = 'inferred'", [alice.handle]);
  t.is(owner.rows[0].tableowner, alice.roleName);
  // A failing create leaves no table behind; an existing name is refused.
  const bad = await imp("inferred2", "a,b\n1,2\n3\n", "create=true");
  t.is(bad.status, 422, bad.text);
  t.is(bad.body.error.code, "TDI07");
  t.is((await db.admin.query("select to_regclass($1) as r", [`${alice.handle}.inferred2`])).rows[0].r, null);
  await refused(t, "inferred", "id\n1\n", "create=true", 409, "TDI12");
  const badName = await imp("Bad Name", "a\n1\n", "create=true");
  t.is(badName.status, 400);
  t.is(badName.body.error.code, "TDT01");
});

test.serial("nobody else can import into, export or read rows of a table: 404, as for a missing one", async (t) => {
  for (const table of ["people", `${alice.handle}.people`, "nosuchtable"]) {
    const before = await snapshot(alice.handle, "people");
    const r = await imp(table, HEAD + "50,Mallory,,,\n", "", { token: bob.token });
    t.is(r.status, 404, r.text);
    t.is(r.body.error.code, "TDI04");
    t.deepEqual(await snapshot(alice.handle, "people"), before);
    const e = await fetch(`${stack.url}/tables/${encodeURIComponent(table)}/export`, { headers: { authorization: `Bearer ${bob.token}` } });
    t.is(e.status, 404);
    t.is((await e.json()).error.code, "TDI04");
    const q = await gql(stack.url, `query($r:String!){ rows(relation:$r) }`, { r: table }, bob.token);
    t.is(q.errors?.[0]?.extensions?.code, "TDT04");
  }
  // The owner's own missing table is the same 404.
  const r = await imp("nosuchtable", HEAD, "");
  t.is(r.status, 404);
  // Anonymous: 401.
  const anon = await imp("people", HEAD + "50,Anon,,,\n", "", { token: null });
  t.is(anon.status, 401);
  t.is(anon.body.error.code, "TDA07");
});

test.serial("export streams CSV with a header, for tables and views, through Pushpin", async (t) => {
  await define(alice, "small", [{ name: "k", type: "integer" }, { name: "v", type: "text" }]);
  t.is((await imp("small", 'k,v\n1,"a,b"\n2,\n')).status, 200);
  const e = await fetch(`${stack.url}/tables/small/export?format=csv`, { headers: { authorization: `Bearer ${alice.token}` } });
  t.is(e.status, 200);
  t.regex(e.headers.get("content-type")!, /text\/csv/);
  t.is(await e.text(), 'k,v\n1,"a,b"\n2,\n');
  // A view the user made (psql-style, as their own role).
  await db.admin.query(`set role ${alice.roleName}; create view ${alice.handle}.small_v as select k * 10 as k10 from ${alice.handle}.small; reset role`);
  const v = await fetch(`${stack.url}/tables/small_v/export`, { headers: { authorization: `Bearer ${alice.token}` } });
  t.is(v.status, 200);
  t.is(await v.text(), "k10\n10\n20\n");
  const f = await fetch(`${stack.url}/tables/small/export?format=xlsx`, { headers: { authorization: `Bearer ${alice.token}` } });
  t.is(f.status, 400);
  t.is((await f.json()).error.code, "TDI14");
});

test.serial("a client that aborts mid-upload leaves the table unchanged and the import recorded as failed", async (t) => {
  const before = await snapshot(alice.handle, "people");
  const ac = new AbortController();
  const enc = new TextEncoder();
  const body = new ReadableStream({ start(c) { c.enqueue(enc.encode(HEAD + "60,Partial,,,\n")); } }); // never closes
  const pending = fetch(`http://127.0.0.1:${stack.server.port}/tables/people/import`, {
    method: "POST", body, duplex: "half", signal: ac.signal,
    headers: { "content-type": "text/csv", authorization: `Bearer ${alice.token}` },
  } as RequestInit).catch((e) => e);
  await eventually(async () => (await db.admin.query("select 1 from pg_stat_activity where query ilike 'copy %people%from stdin%' and state = 'active'")).rowCount);
  ac.abort();
  t.true((await pending) instanceof Error);
  const rec = await eventually(async () => {
    const { rows } = await db.admin.query("select status, error from app_public.imports where user_id = $1 order by id desc limit 1", [alice.id]);
    return rows[0]?.status === "failed" ? rows[0] : null;
  });
  t.is(rec.error.code, "TDI14");
  t.deepEqual(await snapshot(alice.handle, "people"), before);
});

test.serial("an import whose server is killed mid-upload is marked failed (TDI18) by maintenance; a live one is left alone", async (t) => {
  await define(alice, "stalled", [{ name: "n", type: "integer" }]);
  await define(alice, "trickled", [{ name: "n", type: "integer" }]);
  const before = await snapshot(alice.handle, "stalled");
  // A server of its own, killed with SIGKILL while its import is still receiving the body.
  const port = await freePort();
  const child = spawnTs("server/index.ts", { TDC_AUTHENTICATOR_URL: db.authenticatorUrl, TDC_SERVER_PORT: String(port),
    TDC_PUBLISH_URLS: "", LOG_LEVEL: "error", TDC_SERVICE: "server" }, { inherit: false });
  child.stderr?.resume();
  await waitForHttp(`http://127.0.0.1:${port}/healthz`, 60_000, [200, 503]);
  const enc = new TextEncoder();
  const endless = new ReadableStream({ start(c) { c.enqueue(enc.encode("n\n1\n2\n")); } });
  const doomed = fetch(`http://127.0.0.1:${port}/tables/stalled/import`, {
    method: "POST", body: endless, duplex: "half", headers: { "content-type": "text/csv", authorization: `Bearer ${alice.token}` },
  } as RequestInit).catch(() => null);
  // A live import on the shared server keeps sending (and so reporting progress) meanwhile.
  let sent = 0;
  const trickle = new ReadableStream({
    async pull(c) {
      if (sent === 0) c.enqueue(enc.encode("n\n"));
      if (sent++ >= 30) return c.close();  // ~15 s: still sending when maintenance runs below
      await new Promise((r) => setTimeout(r, 500));
      c.enqueue(enc.encode(`${sent}\n`));
    },
  });
  const live = imp("trickled", trickle, "", { direct: true });
  const running = async (table: string) => (await db.admin.query(
    "select id, status, error from app_public.imports where table_name = $1 order by id desc limit 1", [table])).rows[0];
  await eventually(async () => (await running("stalled"))?.status === "running" && (await running("trickled"))?.status === "running", 20_000);
  child.kill("SIGKILL");
  await new Promise((r) => child.once("exit", r));
  await doomed;
  await new Promise((r) => setTimeout(r, 4500));
  t.is((await running("stalled")).status, "running", "nothing else notices a server that went away");
  const n = (await db.admin.query("select app_private.fail_stalled_imports('4 seconds') as n")).rows[0].n;
  t.is(n, 1);
  const dead = await running("stalled");
  t.is(dead.status, "failed");
  t.is(dead.error.code, "TDI18");
  t.true((await events("import.failed")).some((e) => e.data.importId === Number(dead.id) && e.data.error.code === "TDI18"));
  t.deepEqual(await snapshot(alice.handle, "stalled"), before, "nothing of it was kept");
  t.is((await running("trickled")).status, "running");
  const done = await live;
  t.is(done.status, 200, done.text);
  t.is(done.body.rows, 30);
  t.is((await running("trickled")).status, "succeeded");
  // pg_cron runs it every minute where pg_cron is installed (the cron database; see jobs.test.ts).
});
