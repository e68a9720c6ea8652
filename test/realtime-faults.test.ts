/**
 * The delivery promise under faults: while 5,000 events are produced, the
 * worker is killed with SIGKILL and restarted, Pushpin is restarted, and the
 * server is restarted. A subscriber using the `eventsource` npm client (it
 * reconnects with Last-Event-ID by itself) ends with exactly 1..5000, in order.
 */
import test from "ava";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { EventSource } from "eventsource";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { freePort, freePortRange, signUp } from "./helpers/stack.ts";
import { eventually } from "./helpers/wait.ts";
import { createChannel, emitJobEvents, useJobFixtures } from "./helpers/realtime.ts";
import { startServer } from "../server/index.ts";
import { startPushpin, type Pushpin, type PushpinOptions } from "../server/devstack/pushpin.ts";
import { spawnTs, stopChild, waitForHttp } from "../server/devstack/processes.ts";

let db: TestDb;
let server: Awaited<ReturnType<typeof startServer>> | null = null;
let pushpin: Pushpin | null = null;
let worker: ReturnType<typeof spawnTs> | null = null;

test.before(async () => { db = await createTestDb(); useJobFixtures(db); });
test.after.always(async () => {
  if (worker) await stopChild(worker);
  await server?.close();
  await pushpin?.stop();
  await db?.drop();
});

test("kill -9 the worker, restart Pushpin and the server mid-stream: exactly 1..5000, in order", async (t) => {
  const sigKey = randomBytes(32).toString("hex");
  const serverPort = await freePort();
  const ppOpts: PushpinOptions = {
    id: "f" + randomBytes(4).toString("hex"), dataDir: join(process.env.TDC_TEST_DATA_DIR!, "pushpin"),
    httpPort: await freePort(), publishPort: await freePort(), zmqBase: await freePortRange(4),
    origin: `127.0.0.1:${serverPort}`, sigKey,
  };
  const startSrv = () => startServer({ port: serverPort, authenticatorUrl: db.authenticatorUrl, publishUrls: [], gripSigKey: sigKey });
  const startWk = () => {
    const child = spawnTs("worker/index.ts", {
      TDC_OWNER_URL: db.ownerUrl, TDC_PUBLISH_URLS: `http://127.0.0.1:${ppOpts.publishPort}/publish/`, LOG_LEVEL: "error",
    }, { inherit: false });
    child.stderr?.resume();
    return child;
  };
  pushpin = await startPushpin(ppOpts);
  server = await startSrv();
  worker = startWk();
  const url = pushpin.clientUrl;
  // The whole path (Pushpin → server) answers before the first real request.
  await waitForHttp(url + "/healthz", 30_000, [200, 503]);
  const user = await signUp(url);
  t.falsy((await createChannel(url, user, "faults", [{ kind: "job", name: "f" }])).errors);

  const got: number[] = [];
  let opens = 0;
  let recreated = 0;
  let es: EventSource;
  // The client reconnects by itself (with Last-Event-ID). Should it give up (e.g. a reconnect
  // attempt hit a 502 while the origin restarted), a new one resumes from the last id seen.
  const subscribe = () => {
    const last = got.length ? `&lastEventId=${got[got.length - 1]}` : "";
    es = new EventSource(`${url}/channels/faults/events?access_token=${user.token}${last}`);
    es.onopen = () => { opens++; };
    es.addEventListener("job.run_succeeded", (e) => { got.push(Number(e.lastEventId)); });
    es.onerror = (e: any) => {
      if (es.readyState === EventSource.CLOSED) t.log(`client gave up after ${got.length}: ${e?.code ?? ""} ${e?.message ?? ""}`);
      if (es.readyState === EventSource.CLOSED) { recreated++; setTimeout(subscribe, 500); }
    };
  };
  subscribe();
  await eventually(async () => opens >= 1);

  const TOTAL = 5000;
  let emitted = 0;
  const faults: string[] = [];
  const produce = async (upto: number) => {
    while (emitted < upto) {
      const n = Math.min(10, upto - emitted);
      await emitJobEvents(db, user.id, "f", emitted + 1, n, n);
      emitted += n;
      await new Promise((r) => setTimeout(r, 5));
    }
  };

  await produce(1000);
  worker.kill("SIGKILL");
  await new Promise((r) => worker!.once("exit", r));
  faults.push("worker killed");
  await produce(1500);                      // produced while no worker runs: must arrive later
  worker = startWk();
  faults.push("worker restarted");
  await produce(2500);
  await eventually(async () => got.length >= 1500, 30_000);
  await pushpin.stop();
  faults.push("pushpin stopped");
  await produce(3000);                      // produced while Pushpin is down: the forwarder retries
  pushpin = await startPushpin(ppOpts);
  faults.push("pushpin restarted");
  await produce(3500);
  await server.close();
  faults.push("server stopped");
  await produce(4000);
  server = await startSrv();
  faults.push("server restarted");
  await produce(TOTAL);

  await eventually(async () => got.length >= TOTAL, 60_000, 200);
  // A moment for any duplicate to show up before judging.
  await new Promise((r) => setTimeout(r, 500));
  es!.close();
  t.log(`faults: ${faults.join(", ")}; connections opened: ${opens}; clients recreated: ${recreated}`);
  t.is(got.length, TOTAL, "no duplicates");
  t.deepEqual(got, Array.from({ length: TOTAL }, (_, i) => i + 1));
  t.true(opens >= 2, "the Pushpin restart forced at least one reconnect");
});
