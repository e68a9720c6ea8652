import test from "ava";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { startStack, gql, errCode, signUp, type Stack, type TestUser } from "./helpers/stack.ts";

let db: TestDb;
let stack: Stack;
let alice: TestUser;
test.before(async () => {
  db = await createTestDb();
  stack = await startStack(db);
  alice = await signUp(stack.url);
});
test.after.always(async () => {
  await stack?.stop();
  await db?.drop();
});

test.serial("schema", async (t) => {
  const r = await gql(stack.url, `{ __schema { queryType { fields { name args { name type { name kind ofType { name kind ofType { name kind ofType { name } } } } } type { name kind ofType { name kind } } } } mutationType { fields { name args { name type { name kind ofType { name } } } } } } }`, {}, alice.token);
  console.log(JSON.stringify(r.data.__schema.queryType.fields.filter((f: any) => ["tables", "rows", "imports"].includes(f.name)), null, 1));
  console.log(JSON.stringify(r.data.__schema.mutationType.fields.filter((f: any) => /Table/.test(f.name)).map((f: any) => f.name)));
  const i = await gql(stack.url, `{ __type(name: "DefineTableInput") { inputFields { name type { name kind ofType { name kind ofType { name kind ofType { name } } } } } } }`, {}, alice.token);
  console.log(JSON.stringify(i.data, null, 1));
  const c = await gql(stack.url, `{ __type(name: "ColumnSpecInput") { inputFields { name type { name kind } } } }`, {}, alice.token);
  console.log(JSON.stringify(c.data));
  t.pass();
});
