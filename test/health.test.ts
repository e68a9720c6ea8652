import test from "ava";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { startStack, type Stack } from "./helpers/stack.ts";
import { startWorker } from "../worker/index.ts";
import { eventually } from "./helpers/wait.ts";

let db: TestDb;
let stack: Stack;
test.before(async () => {
  db = await createTestDb();
  stack = await startStack(db, { pushpin: true });
});
test.after.always(async () => {
  await stack?.stop();
  await db?.drop();
});

test.serial("healthz names each component and is 503 while one is down", async (t) => {
  const r = await fetch(stack.url + "/healthz");
  t.is(r.status, 503);
  const body = await r.json();
  t.is(body.components.database.status, "ok");
  t.is(body.components.pushpin.status, "ok");
  t.is(body.components.worker.status, "down");
  // This test database is not cron.database_name, so pg_cron is not installed here.
  t.is(body.components.pg_cron.status, "down");
  t.regex(body.components.pg_cron.detail, /pg_cron/);
});

test.serial("a connected worker turns the worker component ok, and its exit turns it down", async (t) => {
  const w = await startWorker({ ownerUrl: db.ownerUrl });
  try {
    const body = await (await fetch(stack.url + "/healthz")).json();
    t.is(body.components.worker.status, "ok");
  } finally {
    await w.stop();
  }
  // The worker's connections close as it exits; the report follows within moments.
  const body = await eventually(async () => {
    const b = await (await fetch(stack.url + "/healthz")).json();
    return b.components.worker.status === "down" && b;
  });
  t.is(body.components.worker.detail, "no worker connected");
});

test.serial("GraphQL answers through Pushpin", async (t) => {
  const r = await fetch(stack.url + "/graphql", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ query: "{ currentUser { id } }" }),
  });
  t.is(r.status, 200);
  t.deepEqual(await r.json(), { data: { currentUser: null } });
  const ide = await fetch(stack.url + "/graphiql", { headers: { accept: "text/html" } });
  t.is(ide.status, 200);
  t.regex(await ide.text(), /ruru/i, "the in-browser IDE (Ruru) is served");
});
