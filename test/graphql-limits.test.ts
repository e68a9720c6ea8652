/** Hostile GraphQL documents are refused before any SQL runs: depth, list nesting, body size. */
import test from "ava";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { startStack, gql, signUp, type Stack } from "./helpers/stack.ts";

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

test("deeply nested queries are refused with a clear error", async (t) => {
  const u = await signUp(stack.url);
  let q = "currentUserId";
  for (let i = 0; i < 40; i++) q = `query { ${q} }`;
  const r = await gql(stack.url, `{ ${q} }`, {}, u.token);
  t.truthy(r.errors);
  t.regex(r.errors![0].message, /depth|deep/i);
  t.falsy(r.data);
});

test("self-referencing cycles are refused", async (t) => {
  const r = await gql(stack.url, `{ query { query { query { query { currentUserId } } } } }`);
  t.truthy(r.errors);
  t.regex(r.errors![0].message, /depth|deep|Query\\.query|nested/i);
});

test("an oversized request body answers 413, and the server keeps serving", async (t) => {
  const big = "x".repeat(2 * 1024 * 1024);
  const r = await fetch(stack.url + "/graphql", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ query: `{ currentUserId }`, variables: { big } }),
  });
  t.is(r.status, 413);
  await r.arrayBuffer();
  const ok = await gql(stack.url, "{ currentUserId }");
  t.deepEqual(ok.data, { currentUserId: null });
});

test("a 10 MB string argument is refused without a 500", async (t) => {
  const r = await fetch(stack.url + "/graphql", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ query: `mutation($e:String!){register(input:{email:$e,password:"long enough"}){user{id}}}`, variables: { e: "a".repeat(10 * 1024 * 1024) } }),
  });
  t.true(r.status >= 400 && r.status < 500);
  await r.arrayBuffer();
});

test("malformed JSON and non-GraphQL bodies get a 4xx", async (t) => {
  for (const body of ["{not json", "", JSON.stringify({ query: 42 }), JSON.stringify({ query: "{ nosuchfield }" })]) {
    const r = await fetch(stack.url + "/graphql", { method: "POST", headers: { "content-type": "application/json" }, body });
    t.true(r.status < 500, `${body.slice(0, 20)} → ${r.status}`);
    await r.arrayBuffer();
  }
});
