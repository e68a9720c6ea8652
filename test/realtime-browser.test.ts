/**
 * The browser's own EventSource (headless Debian Chromium) against the stream
 * through Pushpin: live events in order, and after the stream is cut the
 * browser reconnects by itself with Last-Event-ID and receives what it missed
 * exactly once.
 */
import test from "ava";
import { existsSync } from "node:fs";
import { chromium, type Browser } from "playwright-core";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { startStack, signUp, gql, type Stack } from "./helpers/stack.ts";
import { startWorker } from "../worker/index.ts";
import { eventually } from "./helpers/wait.ts";
import { createChannel, emitJobEvents, useJobFixtures } from "./helpers/realtime.ts";

const CHROMIUM = "/usr/bin/chromium";
let db: TestDb;
let stack: Stack;
let worker: Awaited<ReturnType<typeof startWorker>>;
let browser: Browser;

test.before(async () => {
  db = await createTestDb();
  useJobFixtures(db);
  stack = await startStack(db, { pushpin: true });
  worker = await startWorker({ ownerUrl: db.ownerUrl, publishUrls: [stack.pushpin!.publishUrl] });
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium (npm test does this as root)`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
});
test.after.always(async () => {
  await browser?.close();
  await worker?.stop();
  await stack?.stop();
  await db?.drop();
});

test("browser EventSource: live events, then a cut stream, an automatic reconnect with Last-Event-ID and exactly-once replay", async (t) => {
  const user = await signUp(stack.url);
  t.falsy((await createChannel(stack.url, user, "web", [{ kind: "job", name: "w" }])).errors);
  // An API token for the page (EventSource cannot send headers: ?access_token=).
  const tok = await gql(stack.url, `mutation{ createApiToken(input:{name:"browser"}){ result { token } } }`, {}, user.token);
  const apiToken = tok.data.createApiToken.result.token;
  const page = await browser.newPage();
  await page.goto(stack.url + "/healthz"); // same origin as the stream: no CORS involved
  await page.evaluate((src) => {
    const w = window as any;
    w.got = [];
    w.opens = 0;
    const es = new EventSource(src);
    es.onopen = () => { w.opens++; };
    es.addEventListener("job.run_succeeded", (e) => { w.got.push([(e as MessageEvent).lastEventId, (e as MessageEvent).data]); });
    w.es = es;
  }, `/channels/web/events?access_token=${encodeURIComponent(apiToken)}`);
  await eventually(async () => (await page.evaluate(() => (window as any).opens)) === 1);
  await emitJobEvents(db, user.id, "w", 1, 3);
  await eventually(async () => (await page.evaluate(() => (window as any).got.length)) >= 3);

  // The connection is cut (Pushpin ends the held response, as on a network drop or restart).
  const { rows } = await db.admin.query("select app_hidden.grip_channel(id) as g from app_public.channels where name = 'web'");
  const cut = await fetch(stack.pushpin!.publishUrl, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ items: [{ channel: rows[0].g, id: "3-cut", "prev-id": "3", formats: { "http-stream": { action: "close" } } }] }),
  });
  t.is(cut.status, 200);
  await emitJobEvents(db, user.id, "w", 4, 3);   // while the browser is reconnecting
  await eventually(async () => (await page.evaluate(() => (window as any).opens)) >= 2, 10_000).catch(async (e) => {
    t.log(await page.evaluate(() => JSON.stringify({ opens: (window as any).opens, got: (window as any).got, rs: (window as any).es.readyState })));
    throw e;
  });
  await emitJobEvents(db, user.id, "w", 7, 2);
  await eventually(async () => (await page.evaluate(() => (window as any).got.length)) >= 8);
  const got: Array<[string, string]> = await page.evaluate(() => (window as any).got);
  t.deepEqual(got.map(([id]) => Number(id)), [1, 2, 3, 4, 5, 6, 7, 8]);
  t.is(got[4][1], `{"n":5}`);
  await page.close();
});
