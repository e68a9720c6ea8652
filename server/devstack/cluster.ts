/**
 * The embedded PostgreSQL 15 cluster: created on first use under the data
 * folder, started as a child process on its own port with pg_cron preloaded,
 * stopped with a fast shutdown. When the devstack runs as root, Postgres runs
 * as the `postgres` OS user (initdb refuses root).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync, chownSync, openSync, readFileSync, statSync, chmodSync } from "node:fs";
import { join, dirname } from "node:path";
import pg from "pg";
import { logger } from "../log.ts";

const BIN = "/usr/lib/postgresql/15/bin";

export interface ClusterOptions {
  dir: string;            // cluster folder (holds pgdata/, run/, postgres.log)
  port: number;
  superuserPassword: string;
  cronDatabase: string;   // cron.database_name
  fast?: boolean;         // fsync off etc. (tests, benchmarks of our own code only)
  // A process group of its own (npm start): a terminal's Ctrl-C then reaches only the supervisor,
  // which stops Postgres last. Only for a caller that stops it on SIGINT/SIGTERM itself; otherwise
  // Ctrl-C should take Postgres down with the group.
  ownProcessGroup?: boolean;
}

export interface Cluster {
  adminUrl: (db?: string) => string;
  socketDir: string;
  child: ChildProcess;
  stop: () => Promise<void>;
}

function osUser(): { uid: number; gid: number } | null {
  if (process.getuid?.() !== 0) return null;
  const r = spawnSync("id", ["-u", "postgres"], { encoding: "utf8" });
  const g = spawnSync("id", ["-g", "postgres"], { encoding: "utf8" });
  if (r.status !== 0) throw new Error("running as root but the `postgres` OS user does not exist (is postgresql-15 installed?)");
  return { uid: Number(r.stdout.trim()), gid: Number(g.stdout.trim()) };
}

/**
 * As root, Postgres runs as the `postgres` OS user, which must be able to reach
 * the data folder: a checkout under a 0700 folder (mktemp -d, /root) would lock
 * it out. Grant traverse-only permission (o+x, not read) on such ancestors, and say so.
 */
function ensureTraversable(dir: string) {
  for (let d = dirname(dir); ; d = dirname(d)) {
    const st = statSync(d);
    if ((st.mode & 0o001) === 0) {
      chmodSync(d, st.mode | 0o001);
      logger.warn({ dir: d }, "granted traverse permission (o+x) so the postgres OS user can reach the data folder");
    }
    if (d === dirname(d)) break;
  }
}

export async function startCluster(o: ClusterOptions): Promise<Cluster> {
  const user = osUser();
  if (user) { mkdirSync(o.dir, { recursive: true }); ensureTraversable(o.dir); }
  const pgdata = join(o.dir, "pgdata");
  const socketDir = join(o.dir, "run");
  for (const d of [o.dir, socketDir]) {
    mkdirSync(d, { recursive: true, mode: 0o700 });
    if (user) chownSync(d, user.uid, user.gid);
  }
  if (!existsSync(join(pgdata, "PG_VERSION"))) {
    logger.info({ dir: pgdata }, "creating PostgreSQL 15 cluster");
    const pwfile = join(o.dir, ".pwfile");
    writeFileSync(pwfile, o.superuserPassword + "\n", { mode: 0o600 });
    if (user) chownSync(pwfile, user.uid, user.gid);
    const r = spawnSync(join(BIN, "initdb"), ["-D", pgdata, "-U", "postgres", "--pwfile", pwfile,
      "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"], {
      encoding: "utf8", ...(user ?? {}), cwd: o.dir,
    });
    writeFileSync(pwfile, "");
    if (r.status !== 0) throw new Error(`initdb failed: ${r.stderr}`);
  }
  // Settings are passed on the command line so that one cluster folder can be
  // started with the settings of the code that starts it (no stale conf edits).
  const settings: Record<string, string> = {
    port: String(o.port),
    listen_addresses: "127.0.0.1",
    unix_socket_directories: socketDir,
    shared_preload_libraries: "pg_cron",
    "cron.database_name": o.cronDatabase,
    // Jobs run in background workers: no loopback login (and no password) needed.
    "cron.use_background_workers": "on",
    "cron.max_running_jobs": "16",
    max_worker_processes: "32",
    max_connections: "300",
    shared_buffers: "256MB",
    max_wal_size: "2GB",
    log_min_messages: "warning",
    log_line_prefix: "%m [%p] %q%u@%d ",
  };
  if (o.fast) Object.assign(settings, { fsync: "off", synchronous_commit: "off", full_page_writes: "off" });
  const args = ["-D", pgdata, ...Object.entries(settings).flatMap(([k, v]) => ["-c", `${k}=${v}`])];
  const logFd = openSync(join(o.dir, "postgres.log"), "a");
  // (In the supervisor's group, Postgres shut down at once on Ctrl-C, under the still-running
  // worker, which logged lost connections every time.)
  const child = spawn(join(BIN, "postgres"), args, { stdio: ["ignore", logFd, logFd], ...(user ?? {}), cwd: o.dir, detached: !!o.ownProcessGroup });
  let exited = false;
  child.on("exit", () => (exited = true));
  const adminUrl = (db = "postgres") =>
    `postgres://postgres:${encodeURIComponent(o.superuserPassword)}@127.0.0.1:${o.port}/${db}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (exited) {
      const tail = readFileSync(join(o.dir, "postgres.log"), "utf8").split("\n").slice(-8).join("\n");
      throw new Error(`postgres exited during startup; last log lines:\n${tail}`);
    }
    const c = new pg.Client({ connectionString: adminUrl() });
    try {
      await c.connect();
      await c.query("select 1");
      await c.end();
      break;
    } catch (e) {
      await c.end().catch(() => {});
      if (Date.now() > deadline) throw new Error(`postgres did not accept connections within 60 s: ${(e as Error).message}`);
      await new Promise((r) => setTimeout(r, 150));
    }
  }
  logger.info({ port: o.port }, "postgres ready");
  return {
    adminUrl, socketDir, child,
    stop: () => new Promise<void>((res) => {
      if (exited) return res();
      child.once("exit", () => res());
      child.kill("SIGINT"); // fast shutdown: rolls back open transactions, keeps data
    }),
  };
}
