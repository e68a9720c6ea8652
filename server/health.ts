/**
 * GET /healthz: one JSON report of every component, 503 when any is down.
 * Reachable through Pushpin (:7999) and directly on the origin port, so it can
 * still say "pushpin: down" when Pushpin itself is the one that died.
 */
import type { Express } from "express";
import type pg from "pg";
import { config } from "./config.ts";

type Status = { status: "ok" | "down"; detail?: string };

async function check(fn: () => Promise<Status>): Promise<Status> {
  try {
    return await Promise.race([fn(), new Promise<Status>((r) => setTimeout(() => r({ status: "down", detail: "timeout" }), 2000))]);
  } catch (e) {
    return { status: "down", detail: (e as Error).message };
  }
}

export function installHealth(app: Express, pool: pg.Pool, publishUrls: string[]) {
  app.get("/healthz", async (_req, res) => {
    let db: any = null;
    const database = await check(async () => {
      const { rows } = await pool.query("select app_hidden.health() as h");
      db = rows[0].h;
      return { status: "ok" };
    });
    const pgCron: Status = !db ? { status: "down", detail: "database unreachable" }
      : !db.cron_installed ? { status: "down", detail: "pg_cron extension is not installed in this database" }
      : !db.cron_running ? { status: "down", detail: "pg_cron launcher is not running (shared_preload_libraries?)" }
      : { status: "ok" };
    const worker: Status = !db ? { status: "down", detail: "database unreachable" }
      : db.workers > 0 ? { status: "ok" } : { status: "down", detail: "no worker connected" };
    const pushpin = await check(async () => {
      if (!publishUrls.length) return { status: "down", detail: "no publish URL configured" };
      for (const url of publishUrls) {
        const r = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: '{"items":[]}', signal: AbortSignal.timeout(1500) });
        await r.arrayBuffer();
        if (!r.ok) return { status: "down", detail: `${url} answered ${r.status}` };
      }
      return { status: "ok" };
    });
    const components = { database, pg_cron: pgCron, worker, pushpin };
    const ok = Object.values(components).every((c) => c.status === "ok");
    res.status(ok ? 200 : 503).set("cache-control", "no-store").json({ status: ok ? "ok" : "down", components });
  });
}
