/**
 * `npm run migrate:commit`: freeze `migrations/current/` into the next
 * `migrations/committed/NNNNNN.sql` with graphile-migrate (hash-chained,
 * immutable from then on). Uses a throwaway cluster: a database for the
 * migrations and graphile-migrate's shadow database, which it resets.
 */
import { rmSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { createServer } from "node:net";
import { commit, Logger } from "graphile-migrate";
import { ROOT, config } from "../config.ts";
import { logger } from "../log.ts";
import { loadSecrets } from "./secrets.ts";
import { startCluster } from "./cluster.ts";
import { ensureRoles, ensureDatabase, withDatabase } from "./database.ts";
import { ROLES } from "../roles.ts";

const port: number = await new Promise((res) => {
  const s = createServer();
  s.listen(0, "127.0.0.1", () => { const p = (s.address() as { port: number }).port; s.close(() => res(p)); });
});
const dir = join(config.dataDir, "migrate");
rmSync(dir, { recursive: true, force: true });
mkdirSync(dir, { recursive: true });
const secrets = loadSecrets(dir);
const cluster = await startCluster({ dir: join(dir, "pg"), port, superuserPassword: secrets.superuser, cronDatabase: "tdc_dev" });
let code = 1;
try {
  const admin = cluster.adminUrl();
  const pw = { owner: secrets.owner, authenticator: secrets.authenticator };
  await ensureRoles(admin, pw);
  await ensureDatabase(admin, "tdc_dev");
  const owner = { name: ROLES.owner, password: secrets.owner };
  await commit({
    connectionString: withDatabase(admin, "tdc_dev", owner),
    shadowConnectionString: withDatabase(admin, "tdc_dev_shadow", owner),
    rootConnectionString: admin,
    migrationsFolder: join(ROOT, "migrations"),
    logger: new Logger(() => (level: string, message: string) => logger.info({ src: "graphile-migrate", level }, message)),
  }, process.argv[2] ?? null);
  code = 0;
} catch (e) {
  logger.error({ err: (e as Error).message }, "commit failed");
} finally {
  await cluster.stop();
}
process.exit(code);
