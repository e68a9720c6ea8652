/**
 * docs/security.md must explain every security definer function and every
 * grant in the app schemas. This test lists them from the catalogs and fails
 * on any the document does not mention (object and grantee on one line), and
 * on any definer function without a pinned search_path.
 */
import test from "ava";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../server/config.ts";
import { createTestDb, type TestDb } from "./helpers/db.ts";

let db: TestDb;
test.before(async () => { db = await createTestDb(); });
test.after.always(async () => { await db?.drop(); });

const doc = () => readFileSync(join(ROOT, "docs/security.md"), "utf8").split("\n");
const SCHEMAS = "('app_public','app_hidden','app_private')";

/** Compact a signature like `app_public.register(text, text, text)` → `app_public.register(text,text,text)`. */
const norm = (s: string) => s.replace(/\s+/g, "");

test("every security definer function is explained and pins search_path", async (t) => {
  const { rows } = await db.admin.query(`
    select p.oid::regprocedure::text as sig, p.proconfig
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname in ${SCHEMAS} and p.prosecdef order by 1`);
  t.true(rows.length > 5);
  const lines = doc().map(norm);
  for (const r of rows) {
    t.true((r.proconfig ?? []).some((c: string) => c.startsWith("search_path=")), `${r.sig} must set search_path`);
    t.true(lines.some((l) => l.includes("`" + norm(r.sig) + "`") && /definer/i.test(l)),
      `docs/security.md must explain definer function \`${r.sig}\` (a line with it in backticks and the word "definer")`);
  }
});

test("every grant on app objects to a role is explained", async (t) => {
  const { rows } = await db.admin.query(`
    select 'execute' as priv, p.oid::regprocedure::text as obj, a.grantee::regrole::text as grantee
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace, aclexplode(p.proacl) a
     where n.nspname in ${SCHEMAS} and a.grantee <> 0 and a.grantee <> p.proowner
    union
    select lower(a.privilege_type), c.oid::regclass::text, a.grantee::regrole::text
      from pg_class c join pg_namespace n on n.oid = c.relnamespace, aclexplode(c.relacl) a
     where n.nspname in ${SCHEMAS} and a.grantee <> 0 and a.grantee <> c.relowner
    union
    select lower(a.privilege_type) || ' (columns)', c.oid::regclass::text, a.grantee::regrole::text
      from pg_attribute att join pg_class c on c.oid = att.attrelid join pg_namespace n on n.oid = c.relnamespace,
           aclexplode(att.attacl) a
     where n.nspname in ${SCHEMAS} and a.grantee <> 0
    union
    select 'execute (PUBLIC)', p.oid::regprocedure::text, 'PUBLIC'
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname in ${SCHEMAS} and (p.proacl is null or exists (select 1 from aclexplode(p.proacl) a where a.grantee = 0))
    order by 2, 3, 1`);
  const lines = doc().map(norm);
  const missing = rows.filter((r) => {
    const obj = "`" + norm(r.obj) + "`";
    return !lines.some((l) => l.includes(obj) && l.includes(r.grantee));
  });
  t.deepEqual(missing.map((r) => `${r.priv} on ${r.obj} to ${r.grantee}`), [],
    "docs/security.md must mention each of these grants (object in backticks and the grantee on one line)");
});
