/**
 * Per-test-file databases: each file clones the template built by `npm test`
 * (server/devstack/test.ts) into a database of its own, with its own role
 * prefix, so files run in parallel without seeing each other.
 */
import { readFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import pg from "pg";
import { withDatabase } from "../../server/devstack/database.ts";
import { ROLES } from "../../server/roles.ts";

export const TEMPLATE = "tdc_template";
export const CRON_DB = "tdc_cron";

function env(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run tests with \`npm test\`, which prepares the test cluster`);
  return v;
}

export interface TestDb {
  name: string;
  adminUrl: string;
  ownerUrl: string;
  authenticatorUrl: string;
  admin: pg.Pool;      // superuser: for setup/inspection only, never for the code under test
  drop: () => Promise<void>;
}

export async function createTestDb(opts: { name?: string; cron?: boolean } = {}): Promise<TestDb> {
  const adminBase = env("TDC_TEST_ADMIN_URL");
  const secrets = JSON.parse(readFileSync(env("TDC_TEST_SECRETS"), "utf8"));
  const tag = randomBytes(4).toString("hex");
  const name = opts.name ?? (opts.cron ? CRON_DB : `tdc_t_${tag}`);
  const root = new pg.Client({ connectionString: adminBase });
  await root.connect();
  await root.query(`create database ${root.escapeIdentifier(name)} owner ${ROLES.owner} template ${TEMPLATE}`);
  await root.end();
  const adminUrl = withDatabase(adminBase, name);
  const admin = new pg.Pool({ connectionString: adminUrl, max: 3 });
  admin.on("error", () => {}); // idle clients die when a test restarts or drops things; queries still fail loudly
  // Role names are cluster-wide: give this database's users a prefix of their own.
  await admin.query("update app_private.settings set value = $1 where key = 'role_prefix'", [`t${tag}_`]);
  if (opts.cron) {
    await admin.query("create extension if not exists pg_cron");
    await admin.query(`grant usage on schema cron to ${ROLES.owner}`);
    await admin.query(`grant select, update, delete on cron.job, cron.job_run_details to ${ROLES.owner}`);
  }
  return {
    name, adminUrl, admin,
    ownerUrl: withDatabase(adminBase, name, { name: ROLES.owner, password: secrets.owner }),
    authenticatorUrl: withDatabase(adminBase, name, { name: ROLES.authenticator, password: secrets.authenticator }),
    drop: async () => {
      await admin.end();
      const c = new pg.Client({ connectionString: adminBase });
      await c.connect();
      await c.query(`drop database if exists ${c.escapeIdentifier(name)} with (force)`);
      await c.end();
    },
  };
}

/**
 * Run `fn` as a role inside a transaction that is always rolled back, the way
 * the server runs a request: connected as the authenticator, SET LOCAL ROLE.
 */
export async function asRole<T>(pool: pg.Pool, role: string, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const c = await pool.connect();
  try {
    await c.query("begin");
    await c.query("select set_config('role', $1, true)", [role]);
    return await fn(c);
  } finally {
    await c.query("rollback").catch(() => {});
    c.release();
  }
}

/** The SQLSTATE of the error `p` rejects with (fails the test if it resolves). */
export async function sqlstate(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e: any) {
    return e.code ?? `no-code: ${e.message}`;
  }
  throw new Error("expected the statement to fail, but it succeeded");
}

/**
 * Run SQL as a user's own role in their own schema, committed — what their psql
 * session would do. (Set up through the admin pool: fixtures, not the API under test.)
 */
export async function runAsUser(db: TestDb, user: { roleName: string; handle: string }, sql: string, params: unknown[] = []): Promise<pg.QueryResult> {
  const c = await db.admin.connect();
  try {
    await c.query("begin");
    await c.query("select set_config('role', $1, true), set_config('search_path', $2, true)", [user.roleName, `"${user.handle}", public`]);
    const r = await c.query(sql, params);
    await c.query("commit");
    return r;
  } catch (e) {
    await c.query("rollback").catch(() => {});
    throw e;
  } finally {
    c.release();
  }
}
