/**
 * A held stream ends when the token that opened it expires — also on a channel whose events
 * keep coming, where Pushpin's idle re-check (once a minute, only for streams that received
 * nothing) never comes. Streams of other tokens on the same channel carry on untouched.
 * Own database: JWTs here live 4 s (app_private.settings jwt_ttl).
 */
import test from "ava";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { startStack, signUp, gql, type Stack, type TestUser } from "./helpers/stack.ts";
import { eventually } from "./helpers/wait.ts";
import { createChannel, emitJobEvents, openSse, useJobFixtures } from "./helpers/realtime.ts";
import { startWorker } from "../worker/index.ts";

let db: TestDb;
let stack: Stack;
let worker: Awaited<ReturnType<typeof startWorker>>;
let a: TestUser;

test.before(async () => {
  db = await createTestDb();
  useJobFixtures(db);
  stack = await startStack(db, { pushpin: true });
  worker = await startWorker({ ownerUrl: db.ownerUrl, publishUrls: [stack.pushpin!.publishUrl] });
  a = await signUp(stack.url);
});
test.after.always(async () => {
  await worker?.stop();
  await stack?.stop();
  await db?.drop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("streams end when their token expires, on a busy channel too; other tokens' streams keep streaming", async (t) => {
  t.timeout(60_000);
  t.falsy((await createChannel(stack.url, a, "busy", [{ kind: "job", name: "b" }])).errors);
  const longLived = (await gql(stack.url, `mutation{createApiToken(input:{name:"forever"}){result{token}}}`, {}, a.token)).data.createApiToken.result.token;
  const soon = new Date(Date.now() + 6000).toISOString();
  const shortApi = (await gql(stack.url, `mutation($e:Datetime!){createApiToken(input:{name:"soon", expiresAt:$e}){result{token}}}`, { e: soon }, a.token)).data.createApiToken.result.token;
  await db.admin.query("update app_private.settings set value = '4 seconds' where key = 'jwt_ttl'");
  const login = await gql(stack.url, `mutation($e:String!,$p:String!){authenticate(input:{email:$e,password:$p}){jwtToken}}`, { e: a.email, p: a.password });
  const jwt = login.data.authenticate.jwtToken;
  // 1,200 events already there: the JWT's stream replays them first, in two answers (the first one,
  // 1,000 events, does not hold yet: the expiry must be queued by the answer that holds).
  await emitJobEvents(db, a.id, "b", 1, 1200, 1200);
  const opened = Date.now();
  const byJwt = openSse(`${stack.url}/channels/busy/events?access_token=${jwt}&lastEventId=0`);
  const byApi = openSse(`${stack.url}/channels/busy/events?access_token=${shortApi}`);
  const byLongLived = openSse(`${stack.url}/channels/busy/events`, { authorization: `Bearer ${longLived}` });
  await eventually(async () => [byJwt, byApi, byLongLived].every((s) => s.state.status === 200));
  // An event every 300 ms: none of these streams is ever idle.
  let n = 1200;
  const deadline = Date.now() + 12_000;
  let jwtEndedAt = 0;
  let apiEndedAt = 0;
  while (Date.now() < deadline) {
    await emitJobEvents(db, a.id, "b", ++n, 1);
    await sleep(300);
    if (!jwtEndedAt && byJwt.state.ended) jwtEndedAt = Date.now() - opened;
    if (!apiEndedAt && byApi.state.ended) apiEndedAt = Date.now() - opened;
  }
  t.true(byJwt.events.length > 1200 && byApi.events.length > 0, "both streamed live before they expired");
  t.true(jwtEndedAt >= 3000 && jwtEndedAt <= 8000, `the JWT's stream ended ${jwtEndedAt} ms after opening (token lived 4 s)`);
  t.true(apiEndedAt >= 5000 && apiEndedAt <= 10_000, `the API token's stream ended ${apiEndedAt} ms after opening (token lived 6 s)`);
  t.is(byJwt.state.error, null, "ended cleanly");
  await eventually(async () => byLongLived.events.length >= n - 1200);
  t.false(byLongLived.state.ended, "a token without expiry keeps its stream");
  t.deepEqual(byLongLived.events.map((e) => Number(e.id)), Array.from({ length: n - 1200 }, (_, i) => 1201 + i));
  // An expired token cannot open a new stream either.
  const again = openSse(`${stack.url}/channels/busy/events?access_token=${jwt}`);
  await eventually(async () => again.state.status !== 0);
  t.is(again.state.status, 401);
  byLongLived.close();
  again.close();
});
