/**
 * The worker process: graphile-worker (jobs queued by SQL) plus the event
 * forwarder (database events → Pushpin). Connects as the owner role; its
 * connections carry application_name tdc-worker, which /healthz looks for.
 */
import { run, Logger } from "graphile-worker";
import { config } from "../server/config.ts";
import { logger } from "../server/log.ts";
import { makePool } from "../server/pools.ts";
import { Forwarder, type ForwarderOptions } from "./forwarder.ts";

// graphile-worker's log lines, as structured JSON through our logger.
const workerLogger = new Logger((scope) => (level, message, meta) => {
  const fn = level === "error" ? "error" : level === "warning" ? "warn" : level === "info" ? "info" : "debug";
  logger[fn]({ src: "graphile-worker", ...scope, ...(meta as object) }, message);
});

export async function startWorker(opts: { ownerUrl?: string; publishUrls?: string[]; forwarder?: Partial<ForwarderOptions> } = {}) {
  const ownerUrl = opts.ownerUrl ?? config.ownerUrl;
  if (!ownerUrl) throw new Error("TDC_OWNER_URL is not set (npm start sets it for you)");
  // application_name marks the worker's connections; /healthz counts them.
  const pool = makePool(ownerUrl, "tdc-worker", 10);
  const runner = await run({
    pgPool: pool,
    concurrency: 4,
    noHandleSignals: true,
    pollInterval: 2000,
    taskList: {},
    // Schedules are pg_cron's; an empty list also stops graphile-worker looking for ./crontab.
    parsedCronItems: [],
    logger: workerLogger,
  });
  const forwarder = new Forwarder({ ownerUrl, publishUrls: opts.publishUrls ?? config.publishUrls, ...opts.forwarder });
  await forwarder.start();
  logger.info("worker started");
  let stopping: Promise<void> | null = null;
  return {
    runner, pool, forwarder,
    // Idempotent: a terminal's Ctrl-C and then the supervisor's SIGTERM both ask (graphile-worker
    // throws on a second runner.stop()).
    stop: () => (stopping ??= (async () => { await forwarder.stop(); await runner.stop(); await pool.end(); })()),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const w = await startWorker();
  for (const sig of ["SIGINT", "SIGTERM"] as const) process.on(sig, () => w.stop().then(() => process.exit(0)));
}
