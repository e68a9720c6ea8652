import test from "ava";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { startStack, gql, errCode, signUp, type Stack, type TestUser } from "./helpers/stack.ts";

let db: TestDb;
let stack: Stack;
let alice: TestUser;

/** Run SQL as a user's own role and commit (the way a psql login would create their tables). */
async function asUser(user: TestUser, sql: string) {
  const c = await db.admin.connect();
  try {
    await c.query("begin");
    await c.query(`set local role ${user.roleName}`);
    await c.query(`set local search_path = ${user.handle}, public`);
    await c.query(sql);
    await c.query("commit");
  } catch (e) {
    await c.query("rollback");
    throw e;
  } finally {
    c.release();
  }
}

test.before(async () => {
  db = await createTestDb();
  stack = await startStack(db);
  alice = await signUp(stack.url);
  await asUser(alice, `create table sales (id int primary key, region text not null, amount numeric not null);
    insert into sales select i, 'r' || (i % 5), i from generate_series(1, 100) i;`);
});
test.after.always(async () => {
  await stack?.stop();
  await db?.drop();
});

test.serial("smoke", async (t) => {
  const r = await gql(stack.url, `mutation($q:String!){createView(input:{name:"by_region", query:$q, uniqueKey:["region"]}){view{id name query columns rowCount lastRefreshedAt uniqueKey}}}`,
    { q: "select region, sum(amount) total from sales group by region" }, alice.token);
  t.log(JSON.stringify(r));
  const r2 = await gql(stack.url, `mutation($q:String!){createView(input:{name:"bad", query:$q}){view{id}}}`,
    { q: "select 1; drop table sales" }, alice.token);
  t.log(JSON.stringify(r2));
  const r3 = await gql(stack.url, `query($q:String!){runQuery(query:$q, limit: 2){columns rows truncated}}`,
    { q: "select * from sales order by id" }, alice.token);
  t.log(JSON.stringify(r3));
  const r4 = await gql(stack.url, `mutation{refreshView(input:{name:"by_region"}){refresh{id status rowCount durationMs error added removed}}}`, {}, alice.token);
  t.log(JSON.stringify(r4));
  const r5 = await gql(stack.url, `{views{nodes{name lastRefresh{id} refreshJob{id}}} jobs{nodes{id nextRunAt runs(first:2){nodes{id}}}}}`, {}, alice.token);
  t.log(JSON.stringify(r5));
  t.pass();
});
