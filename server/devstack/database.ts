/**
 * Bootstrap of one application database, run with a superuser connection:
 * cluster-wide roles, the database itself, extensions, then the committed and
 * current migrations (graphile-migrate, as the owner role) and the function
 * files (`functions/*.sql`, create-or-replace, applied in name order on every
 * start). Safe to run again on a database that already has it all.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import { migrate, watch, Logger } from "graphile-migrate";
import { runMigrations as installWorkerSchema } from "graphile-worker";
import { ROOT } from "../config.ts";
import { logger } from "../log.ts";

import { ROLES } from "../roles.ts";
export { ROLES };

export interface Passwords { owner: string; authenticator: string }

/** Replace the database in a URL. */
export function withDatabase(url: string, db: string, user?: { name: string; password: string }): string {
  const u = new URL(url);
  u.pathname = "/" + encodeURIComponent(db);
  if (user) { u.username = encodeURIComponent(user.name); u.password = encodeURIComponent(user.password); }
  return u.toString();
}

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try { return await fn(c); } finally { await c.end(); }
}

/** Roles shared by every database in the cluster. Idempotent; passwords are (re)set from the secrets file. */
export async function ensureRoles(adminUrl: string, pw: Passwords): Promise<void> {
  await withClient(adminUrl, async (c) => {
    // Serialise concurrent bootstraps (e.g. tests) on the cluster-wide role catalog.
    await c.query("select pg_advisory_lock(7423001)");
    try {
      const ensure = async (name: string, attrs: string, password: string | null) => {
        const { rowCount } = await c.query("select 1 from pg_roles where rolname = $1", [name]);
        const verb = rowCount ? "alter" : "create";
        // Role names are constants of this module; the password is quoted by format('%L') in SQL.
        const { rows } = await c.query("select format('%s role %I with %s password %L', $1::text, $2::text, $3::text, $4::text) as sql",
          [verb, name, attrs, password]);
        await c.query(rows[0].sql);
      };
      // Owner: owns the app schemas and runs migrations and the worker. CREATEROLE because
      // registration creates a role per user (see docs/security.md).
      await ensure(ROLES.owner, "login createrole nosuperuser nobypassrls", pw.owner);
      // Authenticator: the server's login; it has no privileges of its own (NOINHERIT) and
      // switches per request to the anonymous role or the caller's user role.
      await ensure(ROLES.authenticator, "login noinherit nocreaterole nosuperuser nobypassrls", pw.authenticator);
      await ensure(ROLES.anonymous, "nologin nosuperuser nobypassrls", null);
      await c.query(`grant ${ROLES.anonymous} to ${ROLES.authenticator}`);
      // The owner must be able to grant user roles to the authenticator (PG 15: CREATEROLE suffices).
    } finally {
      await c.query("select pg_advisory_unlock(7423001)");
    }
  });
}

/** Create the database (if missing) and the superuser-only parts inside it. */
export async function ensureDatabase(adminUrl: string, dbName: string): Promise<{ cron: boolean }> {
  await withClient(adminUrl, async (c) => {
    const { rowCount } = await c.query("select 1 from pg_database where datname = $1", [dbName]);
    if (!rowCount) {
      const { rows } = await c.query("select format('create database %I owner %I', $1::text, $2::text) as sql", [dbName, ROLES.owner]);
      await c.query(rows[0].sql);
      logger.info({ db: dbName }, "created database");
    }
  });
  return withClient(withDatabase(adminUrl, dbName), async (c) => {
    await c.query("create extension if not exists pgcrypto with schema public");
    await c.query(`revoke all on database ${c.escapeIdentifier(dbName)} from public`);
    await c.query(`grant connect, temporary on database ${c.escapeIdentifier(dbName)} to ${ROLES.authenticator}, ${ROLES.owner}`);
    await c.query("revoke create on schema public from public");
    const { rows } = await c.query(
      "select current_setting('cron.database_name', true) as cron_db, exists(select 1 from pg_available_extensions where name = 'pg_cron') as available");
    const cron = rows[0].available && rows[0].cron_db === dbName;
    if (cron) {
      await c.query("create extension if not exists pg_cron");
      await c.query(`grant usage on schema cron to ${ROLES.owner}`);
      await c.query(`grant select, update, delete on cron.job, cron.job_run_details to ${ROLES.owner}`);
    }
    return { cron };
  });
}

/** graphile-migrate (committed, then current) and the function files, as the owner. */
export async function migrateDatabase(adminUrl: string, dbName: string, pw: Passwords): Promise<void> {
  const ownerUrl = withDatabase(adminUrl, dbName, { name: ROLES.owner, password: pw.owner });
  const settings = {
    connectionString: ownerUrl,
    rootConnectionString: withDatabase(adminUrl, "postgres"),
    migrationsFolder: join(ROOT, "migrations"),
    logger: quietMigrateLogger,
  };
  await migrate(settings);
  await watch(settings, true);
  await applyFunctions(ownerUrl);
  // graphile-worker's own schema, installed here so workers need no DDL rights at run time.
  await installWorkerSchema({ connectionString: ownerUrl });
}

/** Apply every `functions/*.sql` file, in name order, in one transaction. */
export async function applyFunctions(ownerUrl: string): Promise<void> {
  const dir = join(ROOT, "functions");
  const files = readdirSync(dir).filter((f) => f.endsWith(".sql")).sort();
  await withClient(ownerUrl, async (c) => {
    await c.query("begin");
    try {
      for (const f of files) {
        try {
          await c.query(readFileSync(join(dir, f), "utf8"));
        } catch (e) {
          throw new Error(`functions/${f}: ${(e as Error).message}`);
        }
      }
      await c.query("commit");
    } catch (e) {
      await c.query("rollback");
      throw e;
    }
  });
}

export async function bootstrapDatabase(adminUrl: string, dbName: string, pw: Passwords): Promise<{ cron: boolean }> {
  await ensureRoles(adminUrl, pw);
  const r = await ensureDatabase(adminUrl, dbName);
  await migrateDatabase(adminUrl, dbName, pw);
  return r;
}

// graphile-migrate logs every step at info; keep our output to warnings and errors.
const quietMigrateLogger = new Logger(() => (level: string, message: string) => {
  if (level === "error" || level === "warning") logger.warn({ src: "graphile-migrate" }, message);
});
