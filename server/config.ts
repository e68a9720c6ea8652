/**
 * The one place that reads the environment. Every process (devstack, server,
 * worker, tests) imports its settings from here; nothing else touches
 * process.env. A `.env` file in the project root is loaded first if present.
 */
import { existsSync } from "node:fs";
import { resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
if (existsSync(resolve(ROOT, ".env"))) process.loadEnvFile(resolve(ROOT, ".env"));

const env = process.env;
const int = (name: string, dflt: number) => {
  const v = env[name];
  if (v == null || v === "") return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer (got ${JSON.stringify(v)})`);
  return n;
};
const str = (name: string, dflt: string) => (env[name] == null || env[name] === "" ? dflt : env[name]!);

export const config = {
  /** Project-local state: the Postgres cluster, Pushpin run/log dirs, generated secrets. */
  dataDir: resolve(ROOT, str("TDC_DATA_DIR", ".data")),
  /** Admin (superuser) URL of an existing database; unset = use the embedded cluster. Only the bootstrap uses it. */
  adminDatabaseUrl: env.DATABASE_URL || null,
  /** Embedded cluster port (never the system Postgres's 5432). */
  pgPort: int("TDC_PG_PORT", 54329),
  /** Name of the application database. */
  dbName: str("TDC_DB_NAME", "tinydevcrm"),
  /** Runtime connection strings, handed to the server and worker by the devstack (or set by you). */
  authenticatorUrl: env.TDC_AUTHENTICATOR_URL || null,
  ownerUrl: env.TDC_OWNER_URL || null,
  /** Origin server (only Pushpin should talk to it). */
  serverHost: str("TDC_SERVER_HOST", "127.0.0.1"),
  serverPort: int("TDC_SERVER_PORT", 3000),
  /** Pushpin: the client-facing port and the loopback-only publish endpoint. */
  pushpinHttpPort: int("TDC_PUSHPIN_PORT", 7999),
  pushpinPublishPort: int("TDC_PUSHPIN_PUBLISH_PORT", 5561),
  /** ZeroMQ ports of Pushpin: push_in (n), sub (n+2), command (n+3). */
  pushpinZmqBase: int("TDC_PUSHPIN_ZMQ_BASE", 5560),
  /** Comma-separated publish URLs, one per Pushpin instance. */
  publishUrls: str("TDC_PUBLISH_URLS", "").split(",").map((s) => s.trim()).filter(Boolean),
  /** Forwarder pacing: after a publish or probe that took ≥ TDC_PUBLISH_PAUSE_AFTER_MS, wait this percentage of how long Pushpin stayed busy (0 = off; worker/forwarder.ts). */
  publishPausePercent: int("TDC_PUBLISH_PAUSE_PERCENT", 50),
  publishPauseAfterMs: int("TDC_PUBLISH_PAUSE_AFTER_MS", 50),
  /** Shared secret Pushpin signs proxied requests with (Grip-Sig). Generated per installation. */
  gripSigKey: env.TDC_GRIP_SIG_KEY || null,
  /** Maximum import upload, bytes. */
  maxImportBytes: int("TDC_MAX_IMPORT_BYTES", 1024 * 1024 * 1024),
  /** Statement timeout for user SQL (views, ad-hoc queries), ms. */
  userSqlTimeoutMs: int("TDC_USER_SQL_TIMEOUT_MS", 30_000),
  /** Maximum GraphQL request body, bytes. */
  maxGraphqlBytes: int("TDC_MAX_GRAPHQL_BYTES", 1024 * 1024),
  logLevel: str("LOG_LEVEL", "info"),
  isCI: env.CI === "true",
};

export type Config = typeof config;
