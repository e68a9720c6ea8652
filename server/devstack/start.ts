/**
 * `npm start`: the whole system on one machine. Embedded Postgres (or
 * DATABASE_URL), migrations and functions, then Pushpin, the server behind it,
 * and the worker. Ctrl-C stops every child; the data folder is kept.
 */
import { existsSync, readFileSync, writeFileSync, unlinkSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import { config } from "../config.ts";
import { logger } from "../log.ts";
import { loadSecrets } from "./secrets.ts";
import { startCluster, type Cluster } from "./cluster.ts";
import { bootstrapDatabase, withDatabase } from "./database.ts";
import { ROLES } from "../roles.ts";
import { startPushpin, type Pushpin } from "./pushpin.ts";
import { spawnTs, stopChild, waitForHttp } from "./processes.ts";
import { childrenFile, recordChild, stopLeftovers } from "./leftovers.ts";

mkdirSync(config.dataDir, { recursive: true });
const lockFile = join(config.dataDir, "tdc.pid");

function alive(pid: number) { try { process.kill(pid, 0); return true; } catch { return false; } }
if (existsSync(lockFile)) {
  const pid = Number(readFileSync(lockFile, "utf8"));
  if (pid && pid !== process.pid && alive(pid)) {
    console.error(`TinyDevCRM is already running (pid ${pid}) on http://localhost:${config.pushpinHttpPort}. Stop it with Ctrl-C in its terminal (or kill ${pid}) first.`);
    process.exit(1);
  }
}
writeFileSync(lockFile, String(process.pid));
// The previous start is gone (no live pid in the lock): stop whatever it left running.
await stopLeftovers(config.dataDir);

const secrets = loadSecrets(config.dataDir);
let cluster: Cluster | null = null;
let pushpin: Pushpin | null = null;
let server: ReturnType<typeof spawnTs> | null = null;
let worker: ReturnType<typeof spawnTs> | null = null;
let stopping = false;
/** The start sequence; a Ctrl-C during it lets the step in flight finish, then stops what started. */
let startup: Promise<void> = Promise.resolve();

async function shutdown(code = 0) {
  if (stopping) return;
  stopping = true;
  logger.info("stopping");
  await startup;
  await Promise.all([stopChild(worker), stopChild(server)]);
  await pushpin?.stop();
  await cluster?.stop();
  try { unlinkSync(childrenFile(config.dataDir)); } catch {}
  try { unlinkSync(lockFile); } catch {}
  process.exit(code);
}
process.on("SIGINT", () => void shutdown(0));
process.on("SIGTERM", () => void shutdown(0));

startup = (async () => { try {
  let adminUrl: string;
  if (config.adminDatabaseUrl) {
    adminUrl = config.adminDatabaseUrl;
  } else {
    cluster = await startCluster({ dir: join(config.dataDir, "pg"), port: config.pgPort, superuserPassword: secrets.superuser, cronDatabase: config.dbName, ownProcessGroup: true });
    adminUrl = cluster.adminUrl();
    recordChild(config.dataDir, "postgres", cluster.child.pid);
  }
  if (stopping) return;
  const { cron } = await bootstrapDatabase(adminUrl, config.dbName, { owner: secrets.owner, authenticator: secrets.authenticator });
  if (!cron) {
    logger.warn({ db: config.dbName }, "pg_cron is not available in this database: scheduled refreshes and retention jobs are disabled. " +
      "Install pg_cron, add it to shared_preload_libraries and set cron.database_name to this database.");
  }
  const pgpass = join(config.dataDir, "pgpass");
  const u = new URL(adminUrl);
  writeFileSync(pgpass, `${u.hostname}:${u.port || 5432}:*:${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}\n`, { mode: 0o600 });
  const authenticatorUrl = withDatabase(adminUrl, config.dbName, { name: ROLES.authenticator, password: secrets.authenticator });
  const ownerUrl = withDatabase(adminUrl, config.dbName, { name: ROLES.owner, password: secrets.owner });
  const publishUrl = `http://127.0.0.1:${config.pushpinPublishPort}/publish/`;
  const publishUrls = config.publishUrls.length ? config.publishUrls : [publishUrl];
  const childEnv = {
    TDC_AUTHENTICATOR_URL: authenticatorUrl, TDC_OWNER_URL: ownerUrl,
    TDC_PUBLISH_URLS: publishUrls.join(","), TDC_GRIP_SIG_KEY: secrets.gripSigKey,
  };
  const watch = (name: string, child: ReturnType<typeof spawnTs>) =>
    child.on("exit", (code, signal) => {
      if (!stopping) logger.error({ component: name, code, signal }, `${name} exited; /healthz reports it down. Restart npm start to bring it back.`);
    });
  if (stopping) return;
  server = spawnTs("server/index.ts", { ...childEnv, TDC_SERVICE: "server" });
  watch("server", server);
  recordChild(config.dataDir, "server", server.pid);
  worker = spawnTs("worker/index.ts", { ...childEnv, TDC_SERVICE: "worker" });
  watch("worker", worker);
  recordChild(config.dataDir, "worker", worker.pid);
  pushpin = await startPushpin({
    id: "main", dataDir: config.dataDir, httpPort: config.pushpinHttpPort, publishPort: config.pushpinPublishPort,
    zmqBase: config.pushpinZmqBase, origin: `${config.serverHost}:${config.serverPort}`, sigKey: secrets.gripSigKey,
  });
  recordChild(config.dataDir, "pushpin", pushpin.child.pid);
  pushpin.child.on("exit", (code, signal) => {
    if (!stopping) logger.error({ component: "pushpin", code, signal }, "pushpin exited; /healthz reports it down. Restart npm start to bring it back.");
  });
  cluster?.child.on("exit", (code) => { if (!stopping) logger.error({ component: "postgres", code }, "postgres exited"); });

  // Up when /healthz through Pushpin says every component is. If one stays down (a DATABASE_URL
  // database without pg_cron, say), start anyway after 20 s and say what is missing; fail only when
  // the path through Pushpin never answers at all.
  const healthUrl = `http://127.0.0.1:${config.pushpinHttpPort}/healthz`;
  const quit = () => stopping;
  await waitForHttp(healthUrl, 20_000, [200], quit).catch(() => waitForHttp(healthUrl, 40_000, [200, 503], quit));
  if (stopping) return;
  const health = await (await fetch(healthUrl)).json() as { components: Record<string, { status: string; detail?: string }> };
  const down = Object.entries(health.components).filter(([, c]) => c.status !== "ok");
  if (down.length) logger.warn({ down: Object.fromEntries(down) }, `running without: ${down.map(([k]) => k).join(", ")} (see /healthz)`);
  const base = `http://localhost:${config.pushpinHttpPort}`;
  console.log([
    "",
    "TinyDevCRM is up.",
    `  Client URL  ${base}            (everything goes through Pushpin)`,
    `  GraphQL     ${base}/graphql    IDE (Ruru): ${base}/graphiql`,
    `  Health      ${base}/healthz`,
    `  psql        PGPASSFILE=${pgpass} psql "postgres://${decodeURIComponent(u.username)}@${u.hostname}:${u.port || 5432}/${config.dbName}"`,
    "  Ctrl-C stops everything; data is kept in " + config.dataDir,
    "",
  ].join("\n"));
} catch (e) {
  if (stopping) return;
  logger.error({ err: (e as Error).message }, "start failed");
  void shutdown(1);  // (it waits for this function to return)
} })();
