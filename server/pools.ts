/**
 * Connection pools. The server logs in as the authenticator role only: it
 * holds no privileges of its own and becomes the caller's role per request
 * (`SET LOCAL ROLE` done by PostGraphile from pgSettings, or by our routes).
 */
import pg from "pg";
import { config } from "./config.ts";
import { logger } from "./log.ts";

// bigint/numeric columns arrive as strings (no silent precision loss); int8 counts we parse ourselves.
export function makePool(connectionString: string, applicationName: string, max = 20): pg.Pool {
  const pool = new pg.Pool({ connectionString, max, application_name: applicationName, idleTimeoutMillis: 30_000 });
  // A pool error (e.g. the server restarted) must not crash the process; the next checkout reconnects.
  pool.on("error", (err) => logger.warn({ err: err.message }, "idle database client error"));
  // A checked-out client also emits 'error' when its connection dies (e.g. Postgres restarts);
  // without a listener that would crash the process. The query in flight fails on its own.
  pool.on("connect", (client) => {
    client.on("error", (err) => logger.warn({ err: err.message }, "database connection lost"));
  });
  return pool;
}

