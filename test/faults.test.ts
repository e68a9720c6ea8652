/**
 * Faults: PostgreSQL restarted under load. The server and the worker must
 * reconnect by themselves; /healthz goes 503 while the database is away and
 * back to 200 (database, worker) after; requests succeed again without any restart
 * of ours. Runs on a private cluster (restarting the shared test cluster would
 * disturb other test files).
 */
import test from "ava";
import { mkdtempSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { startCluster, type Cluster } from "../server/devstack/cluster.ts";
import { bootstrapDatabase, withDatabase } from "../server/devstack/database.ts";
import { ROLES } from "../server/roles.ts";
import { startServer } from "../server/index.ts";
import { startWorker } from "../worker/index.ts";
import { freePort, gql, signUp } from "./helpers/stack.ts";
import { eventually } from "./helpers/wait.ts";

const dir = mkdtempSync(join(process.env.TDC_TEST_DATA_DIR!, "faults-"));
const secrets = JSON.parse(readFileSync(process.env.TDC_TEST_SECRETS!, "utf8"));
let port: number;
let cluster: Cluster;

const startPg = () => startCluster({ dir: join(dir, "pg"), port, superuserPassword: secrets.superuser, cronDatabase: "tdc_faults", fast: true });

test.before(async () => {
  port = await freePort();
  cluster = await startPg();
  await bootstrapDatabase(cluster.adminUrl(), "tdc_faults", { owner: secrets.owner, authenticator: secrets.authenticator });
});
test.after.always(async () => { await cluster?.stop(); });

test("Postgres restarted under load: server and worker reconnect, /healthz 503 then 200", async (t) => {
  const admin = cluster.adminUrl("tdc_faults");
  const server = await startServer({ port: await freePort(), authenticatorUrl: withDatabase(admin, "tdc_faults", { name: ROLES.authenticator, password: secrets.authenticator }), publishUrls: [] });
  const worker = await startWorker({ ownerUrl: withDatabase(admin, "tdc_faults", { name: ROLES.owner, password: secrets.owner }) });
  const url = `http://127.0.0.1:${server.port}`;
  const health = async () => (await (await fetch(url + "/healthz")).json()).components;
  try {
    // (No Pushpin in this test: /healthz stays 503 for it; the other components are what we watch.)
    await eventually(async () => { const h = await health(); return h.worker.status === "ok" && h.pg_cron.status === "ok"; });
    const u = await signUp(url, "loaded");

    // Load: 8 clients querying continuously through the restart.
    let stop = false, ok = 0, failed = 0;
    const bad: string[] = [];
    const client = async () => {
      while (!stop) {
        const r = await fetch(url + "/graphql", {
          method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${u.token}` },
          body: JSON.stringify({ query: "{currentUser{handle}}" }),
        });
        const text = await r.text();
        let body: any;
        try { body = JSON.parse(text); } catch { bad.push(`${r.status} non-JSON: ${text.slice(0, 80)}`); continue; }
        if (body.data?.currentUser?.handle === "loaded") { ok++; continue; }
        failed++;
        // While the database is away: 503 TDX01 from the auth step, or GraphQL error TDX01. Nothing else.
        const code = body.error?.code ?? body.errors?.[0]?.extensions?.code;
        if (code !== "TDX01") bad.push(`${r.status} ${text.slice(0, 120)}`);
      }
    };
    const clients = Array.from({ length: 8 }, client);
    await eventually(async () => ok > 50);

    await cluster.stop();
    const down = await eventually(async () => { const r = await fetch(url + "/healthz"); return r.status === 503 && r.json(); });
    t.is(down.components.database.status, "down");
    cluster = await startPg();

    const back = await eventually(async () => {
      const h = await health();
      return h.database.status === "ok" && h.worker.status === "ok" && h.pg_cron.status === "ok" && h;
    }, 30_000, 250);
    t.truthy(back, "database, worker and pg_cron all report ok again");
    const before = ok;
    await eventually(async () => ok > before + 50, 15_000);
    stop = true;
    await Promise.all(clients);
    t.deepEqual(bad, [], "during the outage every answer was JSON with code TDX01");
    t.log({ ok, failedDuringOutage: failed });
    const after = await gql(url, "{currentUser{handle}}", {}, u.token);
    t.is(after.data.currentUser.handle, "loaded");
  } finally {
    await worker.stop().catch(() => {});
    await server.close().catch(() => {});
  }
});
