/**
 * `npm run bench:<name>` → `boot.sh bench <name>`: a fresh cluster under
 * <data>/bench (own port, normal durability settings), the app database
 * bootstrapped as in production (pg_cron in it), then `bench/<name>.ts` with
 * TDC_BENCH_* in its environment. Results: bench/results/<name>.json (+ .md).
 */
import { spawn } from "node:child_process";
import { rmSync, mkdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { ROOT, config } from "../config.ts";
import { logger } from "../log.ts";
import { loadSecrets } from "./secrets.ts";
import { startCluster } from "./cluster.ts";
import { bootstrapDatabase } from "./database.ts";

const name = process.argv[2];
if (!name || !existsSync(join(ROOT, "bench", `${name}.ts`))) {
  console.error(`usage: boot.sh bench <name>   (bench/<name>.ts must exist)`);
  process.exit(2);
}
const dir = join(config.dataDir, "bench");
rmSync(dir, { recursive: true, force: true });
mkdirSync(dir, { recursive: true });
mkdirSync(join(ROOT, "bench", "results"), { recursive: true });
const secrets = loadSecrets(dir);
const port = Number(process.env.TDC_BENCH_PG_PORT || 54350);
const dbName = "tdc_bench";
const cluster = await startCluster({ dir: join(dir, "pg"), port, superuserPassword: secrets.superuser, cronDatabase: dbName });
let code = 1;
try {
  const adminUrl = cluster.adminUrl();
  await bootstrapDatabase(adminUrl, dbName, { owner: secrets.owner, authenticator: secrets.authenticator });
  code = await new Promise<number>((res) => {
    const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "bench", `${name}.ts`), ...process.argv.slice(3)], {
      stdio: "inherit", cwd: ROOT,
      env: {
        ...process.env, LOG_LEVEL: process.env.LOG_LEVEL || "warn",
        TDC_BENCH_ADMIN_URL: cluster.adminUrl(dbName), TDC_BENCH_SECRETS: join(dir, "secrets.json"),
        TDC_BENCH_DATA_DIR: dir, TDC_BENCH_PG_SOCKET_DIR: cluster.socketDir, TDC_BENCH_DB: dbName,
      },
    });
    child.on("exit", (c, sig) => res(c ?? (sig ? 1 : 0)));
  });
} catch (e) {
  logger.error({ err: (e as Error).stack }, "bench bootstrap failed");
} finally {
  await cluster.stop();
}
process.exit(code);
