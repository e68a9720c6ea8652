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

test("breadth: thousands of aliases (or a fragment spread many times) are refused before anything runs", async (t) => {
  const aliases = Array.from({ length: 5000 }, (_, i) => `a${i}: currentUserId`).join(" ");
  const r = await gql(stack.url, `{ ${aliases} }`);
  t.truthy(r.errors);
  t.regex(r.errors![0].message, /too large/);
  t.falsy(r.data);
  const frag = `fragment F on Query { ${Array.from({ length: 40 }, (_, i) => `b${i}: currentUserId`).join(" ")} }`;
  const spreads = Array.from({ length: 40 }, (_, i) => `q${i}: query { ...F }`).join(" ");
  const r2 = await gql(stack.url, `{ ${spreads} } ${frag}`);
  t.regex(r2.errors?.[0]?.message ?? "", /too large/);
  const ok = await gql(stack.url, `{ ${Array.from({ length: 50 }, (_, i) => `c${i}: currentUserId`).join(" ")} }`);
  t.falsy(ok.errors, "an ordinary wide query still works");
  const { getIntrospectionQuery } = await import("postgraphile/graphql");
  const intro = await gql(stack.url, getIntrospectionQuery({ descriptions: true, specifiedByUrl: true }));
  t.falsy(intro.errors, "the IDE's full introspection query passes every limit");
  t.truthy(intro.data.__schema.types.length > 10);
});
