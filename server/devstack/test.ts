/**
 * `npm test`: a fresh, throwaway PostgreSQL cluster (under <data>/test, on its
 * own port), one template database built with the real bootstrap, then ava.
 * Each test file clones its own database from the template (test/helpers/db.ts)
 * and starts its own server/worker/Pushpin on free ports as it needs them.
 */
import { spawn } from "node:child_process";
import { rmSync, writeFileSync, mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import { ROOT, config } from "../config.ts";
import { logger } from "../log.ts";
import { loadSecrets } from "./secrets.ts";
import { startCluster } from "./cluster.ts";
import { bootstrapDatabase } from "./database.ts";
import { createServer } from "node:net";

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => { const { port } = s.address() as { port: number }; s.close(() => res(port)); });
  });
}

export const TEST_TEMPLATE = "tdc_template";
export const TEST_CRON_DB = "tdc_cron";

const dir = join(config.dataDir, "test");
rmSync(dir, { recursive: true, force: true });
mkdirSync(dir, { recursive: true });
const secrets = loadSecrets(dir);
// A free port unless one is given: a test run never collides with `npm start` or another run.
const port = Number(process.env.TDC_TEST_PG_PORT) || await freePort();
const started = Date.now();
const cluster = await startCluster({ dir: join(dir, "pg"), port, superuserPassword: secrets.superuser, cronDatabase: TEST_CRON_DB, fast: true });
let code = 1;
try {
  const adminUrl = cluster.adminUrl();
  await bootstrapDatabase(adminUrl, TEST_TEMPLATE, { owner: secrets.owner, authenticator: secrets.authenticator });
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  await c.query(`alter database ${TEST_TEMPLATE} is_template true`);
  await c.end();
  logger.info({ ms: Date.now() - started }, "test cluster and template ready");
  const env = {
    ...process.env,
    TDC_TEST_ADMIN_URL: adminUrl,
    TDC_TEST_DATA_DIR: dir,
    TDC_TEST_SECRETS: join(dir, "secrets.json"),
    LOG_LEVEL: process.env.LOG_LEVEL || "warn",
    GRAPHILE_ENV: "test",
  };
  writeFileSync(join(dir, "env.json"), JSON.stringify({ adminUrl }), { mode: 0o600 });
  const runAva = (args: string[]) => new Promise<number>((res) => {
    const ava = spawn(process.execPath, [join(ROOT, "node_modules/ava/entrypoints/cli.mjs"), ...args], { stdio: "inherit", env, cwd: ROOT });
    ava.on("exit", (c, sig) => res(c ?? (sig ? 1 : 0)));
  });
  const args = process.argv.slice(2);
  if (args.length) {
    code = await runAva(args);
  } else {
    // The load test saturates both cores by design; run beside other files, their extra CPU
    // pushed Pushpin's proxy into refusing request bursts (502, see docs/realtime.md). It runs
    // alone, after everything else.
    const LOAD = "test/load.test.ts";
    code = await runAva([...readdirSync(join(ROOT, "test")).filter((f) => f.endsWith(".test.ts") && `test/${f}` !== LOAD).map((f) => `test/${f}`)]);
    const loadCode = await runAva([LOAD]);
    code = code || loadCode;
  }
} catch (e) {
  logger.error({ err: (e as Error).stack }, "test bootstrap failed");
} finally {
  await cluster.stop();
}
process.exit(code);
