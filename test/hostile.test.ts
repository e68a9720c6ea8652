/**
 * Hostile input across entry points (GraphQL identifiers, import bodies, SSE
 * parameters): every case is a clear 4xx / GraphQL error with a code, no 500,
 * no crash, nothing written. (Tokens: test/accounts.test.ts; GraphQL document
 * limits: test/graphql-limits.test.ts; user SQL: test/usersql.test.ts.)
 */
import test from "ava";
import { gzipSync } from "node:zlib";
import { randomBytes } from "node:crypto";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { startStack, gql, errCode, signUp, type Stack, type TestUser } from "./helpers/stack.ts";

let db: TestDb;
let stack: Stack;
let u: TestUser;

test.before(async () => {
  db = await createTestDb();
  stack = await startStack(db, { pushpin: true });
  u = await signUp(stack.url, "hostile");
  const t = await gql(stack.url, `mutation{defineTable(input:{name:"notes",columns:[{name:"id",type:"integer",primaryKey:true},{name:"body",type:"text"}]}){table{name}}}`, {}, u.token);
  if (t.errors) throw new Error(JSON.stringify(t.errors));
  await fetch(stack.url + "/tables/notes/import", { method: "POST", headers: { authorization: `Bearer ${u.token}`, "content-type": "text/csv" }, body: "id,body\n1,keep me\n" }).then((r) => r.text());
  const c = await gql(stack.url, `mutation{createChannel(input:{name:"feed",sources:[{kind:"imports"}]}){channel{name}}}`, {}, u.token);
  if (c.errors) throw new Error(JSON.stringify(c.errors));
});
test.after.always(async () => {
  await stack?.stop();
  await db?.drop();
});

async function notes(): Promise<string> {
  const { rows } = await db.admin.query("select coalesce(string_agg(id || ':' || left(body, 20), ',' order by id), '') as s from hostile.notes");
  return rows[0].s;
}

async function importCsv(body: Buffer | string, headers: Record<string, string> = {}) {
  const r = await fetch(stack.url + "/tables/notes/import", {
    method: "POST", headers: { authorization: `Bearer ${u.token}`, "content-type": "text/csv", ...headers }, body: body as BodyInit,
  });
  const text = await r.text();
  let json: any = null;
  try { json = JSON.parse(text); } catch { /* checked below */ }
  return { status: r.status, json, text };
}

test.serial("GraphQL identifiers with quotes, unicode look-alikes or huge lengths are refused with codes", async (t) => {
  const cases: Array<[string, Record<string, unknown>, string]> = [
    [`mutation($n:String!){defineTable(input:{name:$n,columns:[{name:"a",type:"text"}]}){table{name}}}`, { n: `x"; drop table notes; --` }, "TDT01"],
    [`mutation($n:String!){defineTable(input:{name:$n,columns:[{name:"a",type:"text"}]}){table{name}}}`, { n: "tаble" /* Cyrillic а */ }, "TDT01"],
    [`mutation($n:String!){defineTable(input:{name:$n,columns:[{name:"a",type:"text"}]}){table{name}}}`, { n: "t".repeat(100_000) }, "TDT01"],
    [`mutation($n:String!){defineTable(input:{name:"ok_name",columns:[{name:$n,type:"text"}]}){table{name}}}`, { n: `a" text, b "` }, "TDT01"],
    [`mutation($t:String!){defineTable(input:{name:"ok_name",columns:[{name:"a",type:$t}]}){table{name}}}`, { t: "text); drop table notes; --" }, "TDT02"],
    [`mutation($n:String!){createChannel(input:{name:$n,sources:[{kind:"imports"}]}){channel{name}}}`, { n: `feed'; --` }, "TDC01"],
    [`mutation($n:String!){createView(input:{name:$n,query:"select 1"}){view{name}}}`, { n: `v"x` }, "TDV01"],
  ];
  for (const [q, v, code] of cases) {
    const r = await gql(stack.url, q, v, u.token);
    t.is(r.status, 200);
    t.is(errCode(r), code, JSON.stringify(r.errors));
  }
  const { rows } = await db.admin.query("select count(*)::int as n from pg_class where relnamespace = 'hostile'::regnamespace and relkind in ('r','m','v')");
  t.is(rows[0].n, 1, "still only the notes table");
  t.is(await notes(), "1:keep me");
});

test.serial("import: binary junk, 100k columns, malformed gzip are 4xx and write nothing; a 1 MB field is fine", async (t) => {
  const junk = await importCsv(randomBytes(64 * 1024));
  t.true(junk.status >= 400 && junk.status < 500, junk.text.slice(0, 200));
  t.regex(junk.json?.error?.code ?? "", /^TDI\d\d$/);

  const wide = "id,body," + Array.from({ length: 100_000 }, (_, i) => `c${i}`).join(",") + "\n2,x\n";
  const w = await importCsv(wide);
  t.true(w.status >= 400 && w.status < 500, w.text.slice(0, 200));
  t.regex(w.json?.error?.code ?? "", /^TDI\d\d$/);

  const badGzip = Buffer.concat([Buffer.from([0x1f, 0x8b, 0x08, 0x00]), randomBytes(2000)]);
  const g = await importCsv(badGzip, { "content-encoding": "gzip" });
  t.true(g.status >= 400 && g.status < 500, g.text.slice(0, 200));
  t.regex(g.json?.error?.code ?? "", /^TDI\d\d$/);

  const truncatedGzip = gzipSync(Buffer.from("id,body\n3,x\n4,y\n")).subarray(0, 20);
  const tg = await importCsv(truncatedGzip, { "content-encoding": "gzip" });
  t.true(tg.status >= 400 && tg.status < 500, tg.text.slice(0, 200));
  t.is(await notes(), "1:keep me", "nothing written by any refused import");

  const big = "x".repeat(1024 * 1024);
  const ok = await importCsv(`id,body\n5,${big}\n`);
  t.is(ok.status, 200, ok.text.slice(0, 200));
  const { rows } = await db.admin.query("select length(body) as n from hostile.notes where id = 5");
  t.is(rows[0].n, 1024 * 1024);
});

async function openStream(query: string, headers: Record<string, string> = {}) {
  const ctl = new AbortController();
  const r = await fetch(`${stack.url}/channels/feed/events${query}`, { headers: { authorization: `Bearer ${u.token}`, ...headers }, signal: ctl.signal });
  let first = "";
  if (r.headers.get("content-type")?.startsWith("text/event-stream")) {
    const reader = r.body!.getReader();
    const deadline = Date.now() + 5000;
    while (!first.includes("\n\n") && Date.now() < deadline) {
      const { value, done } = await Promise.race([reader.read(), new Promise<any>((res) => setTimeout(() => res({ value: undefined, done: false }), 500))]);
      if (done) break;
      if (value) first += Buffer.from(value).toString();
    }
  } else {
    first = await r.text();
  }
  ctl.abort();
  return { status: r.status, first };
}

test.serial("SSE: negative, non-numeric or huge Last-Event-ID is a 400 with a code; an unknown but valid id resets", async (t) => {
  for (const bad of ["-1", "abc", "1e3", "9".repeat(40), "5x"]) {
    const viaHeader = await openStream("", { "last-event-id": bad });
    t.is(viaHeader.status, 400, `header ${bad}`);
    t.is(JSON.parse(viaHeader.first).error.code, "TDC06");
    const viaQuery = await openStream(`?lastEventId=${encodeURIComponent(bad)}`);
    t.is(viaQuery.status, 400, `query ${bad}`);
  }
  const unknown = await openStream("", { "last-event-id": "999999999999999" });
  t.is(unknown.status, 200);
  t.regex(unknown.first, /event: reset/);
  const foreignName = await fetch(`${stack.url}/channels/${encodeURIComponent("../../graphql")}/events`, { headers: { authorization: `Bearer ${u.token}` } });
  t.true(foreignName.status === 404 || foreignName.status === 400);
  await foreignName.arrayBuffer();
  const h = await (await fetch(stack.url + "/healthz")).json();
  t.is(h.components.database.status, "ok", "still serving");
});
