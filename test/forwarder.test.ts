/**
 * The forwarder (worker/forwarder.ts) with a real Pushpin, one worker per test:
 * - which channels it reads: those hinted by NOTIFY payloads (a whole backlog included),
 *   every channel on the poll tick (a lost NOTIFY costs at most one poll interval);
 * - pacing: after a publish that took at least pauseAfterMs (and after every publish for 5 s
 *   since) it probes Pushpin with an empty publish and waits pausePercent of how long Pushpin
 *   stayed busy (capped) before the next publish; the events committed meanwhile travel as one
 *   item. Most tests make every publish count as slow (pauseAfterMs 0) and the pause always the
 *   cap, so the behaviour does not hang on how fast this machine's Pushpin answers; the probe's
 *   test puts a relay that holds requests in front of the real Pushpin.
 */
import test, { type ExecutionContext } from "ava";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import http from "node:http";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { startStack, signUp, freePort, freePortRange, type Stack, type TestUser } from "./helpers/stack.ts";
import { startPushpin, type Pushpin } from "../server/devstack/pushpin.ts";
import { eventually } from "./helpers/wait.ts";
import { createChannel, emitJobEvents, openSse, useJobFixtures } from "./helpers/realtime.ts";
import { startWorker } from "../worker/index.ts";
import type { ForwarderOptions } from "../worker/forwarder.ts";

let db: TestDb;
let stack: Stack;
let a: TestUser;

test.before(async () => {
  db = await createTestDb();
  useJobFixtures(db);
  stack = await startStack(db, { pushpin: true });
  a = await signUp(stack.url);
});
test.after.always(async () => {
  await stack?.stop();
  await db?.drop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ids = (evs: Array<{ id: string }>) => evs.map((e) => Number(e.id));
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
type Worker = Awaited<ReturnType<typeof startWorker>>;

/** A worker (the only forwarder of the test database) for the length of `fn`. */
async function withWorker(forwarder: Partial<ForwarderOptions>, fn: (w: Worker) => Promise<void>, publishUrls = [stack.pushpin!.publishUrl]) {
  const worker = await startWorker({ ownerUrl: db.ownerUrl, publishUrls, forwarder });
  try { await fn(worker); } finally { await worker.stop(); }
}

/** A's channel `name` fed by job `job`, and a live subscriber to it (close it when done). */
async function channelWithSubscriber(t: ExecutionContext, name: string, job: string) {
  t.falsy((await createChannel(stack.url, a, name, [{ kind: "job", name: job }])).errors);
  const s = openSse(`${stack.url}/channels/${name}/events`, { authorization: `Bearer ${a.token}` });
  await eventually(async () => s.state.status === 200);
  return s;
}

test.serial("a channel's NOTIFY makes the forwarder read that channel only, its whole backlog included", async (t) => {
  // No poll tick during the test: only the start-up read covers every channel.
  await withWorker({ pollMs: 600_000 }, async (worker) => {
    const s = await channelWithSubscriber(t, "hinted", "h");
    await eventually(async () => worker.forwarder.reads.full >= 1); // the start-up read (on a busy machine it can come late)
    const full0 = worker.forwarder.reads.full;
    // 4,500 events in one transaction (one NOTIFY): more than one read's page (2,000).
    await emitJobEvents(db, a.id, "h", 1, 4500, 4500);
    await emitJobEvents(db, a.id, "h", 4501, 3);
    await eventually(async () => s.events.length >= 4503, 20_000);
    t.deepEqual(ids(s.events), range(1, 4503));
    t.is(worker.forwarder.reads.full, full0, "no read of every channel was needed");
    t.true(worker.forwarder.reads.hinted >= 3, "4,503 events need 3 pages at least");
    s.close();
  });
});

test.serial("an event whose NOTIFY never came is published on the next poll tick; odd payloads are harmless", async (t) => {
  await withWorker({ pollMs: 300 }, async () => {
    const s = await channelWithSubscriber(t, "quiet", "q");
    await emitJobEvents(db, a.id, "q", 1, 1);
    await eventually(async () => s.events.length >= 1);
    // Written the way emit_event does, minus the NOTIFY.
    const chanId = (await db.admin.query("select id from app_public.channels where name = 'quiet' and user_id = $1", [a.id])).rows[0].id;
    await db.admin.query(
      `with h as (update app_private.channel_heads set last_seq = last_seq + 1 where channel_id = $1 returning last_seq)
       insert into app_private.events (channel_id, seq, type, data) select $1, last_seq, 'job.run_succeeded', '{"n":2}' from h`, [chanId]);
    await eventually(async () => s.events.length >= 2);
    for (const payload of ["99999999999", "abc", "0", "-1", "1e3", "9".repeat(40)]) {
      await db.admin.query("select pg_notify('tdc_events', $1)", [payload]);
    }
    await emitJobEvents(db, a.id, "q", 3, 1);
    await eventually(async () => s.events.length >= 3);
    t.deepEqual(ids(s.events), [1, 2, 3]);
    t.deepEqual(s.events.map((e) => e.data), ['{"n":1}', '{"n":2}', '{"n":3}']);
    s.close();
  });
});

test.serial("events committed during a pause after a slow publish are published together, in order", async (t) => {
  await withWorker({ pauseAfterMs: 0, pausePercent: 100_000_000, maxPauseMs: 3000 }, async (worker) => {
    const s = await channelWithSubscriber(t, "paced", "j");
    const items0 = worker.forwarder.published;
    // 8 transactions, 100 ms apart: without a pause each would be its own publish.
    for (let n = 1; n <= 8; n++) {
      await emitJobEvents(db, a.id, "j", n, 1);
      await sleep(100);
    }
    await eventually(async () => s.events.length >= 8);
    t.deepEqual(ids(s.events), range(1, 8));
    const items = worker.forwarder.published - items0;
    t.true(items <= 3, `8 events in ${items} items (3 s pauses): the pause groups them`);
    t.true(worker.forwarder.pauses >= 1);
    s.close();
  });
});

test.serial("stop() ends a pause at once (a 60 s pause does not hold the worker)", async (t) => {
  t.timeout(10_000);
  await withWorker({ pauseAfterMs: 0, pausePercent: 100_000_000, maxPauseMs: 60_000 }, async (worker) => {
    t.falsy((await createChannel(stack.url, a, "stopping", [{ kind: "job", name: "k" }])).errors);
    const pauses0 = worker.forwarder.pauses;
    await emitJobEvents(db, a.id, "k", 1, 1);
    await eventually(async () => worker.forwarder.pauses > pauses0);
    // Now in a 60 s pause (pausePercent makes any publish's pause the cap).
    await worker.stop();
    t.pass();
  });
});

test.serial("publishes faster than pauseAfterMs are not followed by a pause", async (t) => {
  await withWorker({ pauseAfterMs: 60_000, pausePercent: 100_000_000, maxPauseMs: 1500 }, async (worker) => {
    t.falsy((await createChannel(stack.url, a, "unpaced", [{ kind: "job", name: "u" }])).errors);
    const items0 = worker.forwarder.published;
    for (let n = 1; n <= 5; n++) {
      await emitJobEvents(db, a.id, "u", n, 1);
      await eventually(async () => worker.forwarder.published >= items0 + n);
    }
    t.is(worker.forwarder.pauses, 0);
    t.is(worker.forwarder.probes, 0, "no slow publish, no probe");
  });
});

/**
 * A stand-in for a Pushpin whose handler is busy: a relay in front of the real publish endpoint
 * that holds empty publishes (the forwarder's probes) `probeMs` and the first publish with items
 * `firstMs` (one that waited for an earlier fan-out); every request then goes through unchanged.
 */
async function busyPushpinRelay(probeMs: number, firstMs: number) {
  let first = true;
  const server = http.createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks).toString();
    const probe = JSON.parse(body).items.length === 0;
    if (probe) await sleep(probeMs);
    else if (first) { first = false; await sleep(firstMs); }
    const r = await fetch(stack.pushpin!.publishUrl, { method: "POST", headers: { "content-type": "application/json" }, body });
    res.writeHead(r.status, { "content-type": "text/plain" }).end(await r.text());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(server.address() as any).port}/publish/`, close: () => new Promise((r) => server.close(r)) };
}

test.serial("after a slow publish, every publish is followed by a probe and the pause follows how long Pushpin stays busy", async (t) => {
  const relay = await busyPushpinRelay(400, 150);
  try {
    await withWorker({ pauseAfterMs: 100, pausePercent: 50, maxPauseMs: 1000 }, async (worker) => {
      const s = await channelWithSubscriber(t, "probed", "p");
      for (let n = 1; n <= 3; n++) {
        await emitJobEvents(db, a.id, "p", n, 1);
        await eventually(async () => s.events.length >= n);
        await eventually(async () => worker.forwarder.pauses >= n, 5000);
      }
      t.deepEqual(ids(s.events), [1, 2, 3]);
      // The 2nd and 3rd publishes answered at once: paced only because the probe found Pushpin busy.
      t.is(worker.forwarder.pauses, 3);
      t.is(worker.forwarder.probes, 3);
      // 50 % of the probe's 400 ms each time, not of the publishes' 150 ms and ~0 ms.
      t.true(worker.forwarder.pausedMs >= 3 * 190, `paused ${Math.round(worker.forwarder.pausedMs)} ms in all`);
      s.close();
    }, [relay.url]);
  } finally {
    await relay.close();
  }
});

test.serial("an outage's retries do not count as a slow publish: no pause once Pushpin is back", async (t) => {
  // A second Pushpin that is down at first: every publish is retried (100 ms, 200 ms, … backoff)
  // until it is up; the rounds that then succeed take a few ms.
  const publishPort = await freePort();
  let late: Pushpin | null = null;
  try {
    await withWorker({ pauseAfterMs: 300, pausePercent: 100, maxPauseMs: 1000 }, async (worker) => {
      const s = await channelWithSubscriber(t, "outage", "o");
      const published0 = worker.forwarder.published;
      await emitJobEvents(db, a.id, "o", 1, 1);
      await sleep(1500); // retried meanwhile
      t.is(worker.forwarder.published, published0, "not accepted by every instance yet");
      late = await startPushpin({
        id: "o" + randomBytes(4).toString("hex"), dataDir: join(process.env.TDC_TEST_DATA_DIR!, "pushpin"),
        httpPort: await freePort(), publishPort, zmqBase: await freePortRange(4),
        origin: `127.0.0.1:${stack.server.port}`, sigKey: stack.sigKey,
      });
      await eventually(async () => worker.forwarder.published > published0, 15_000);
      await eventually(async () => s.events.length >= 1);
      t.deepEqual(ids(s.events), [1]);
      t.is(worker.forwarder.pauses, 0, "the publish took seconds in all, its last round a few ms");
      s.close();
    }, [stack.pushpin!.publishUrl, `http://127.0.0.1:${publishPort}/publish/`]);
  } finally {
    await (late as Pushpin | null)?.stop();
  }
});
