import test from "ava";
import pg from "pg";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { startStack, gql, errCode, signUp, type Stack, type TestUser } from "./helpers/stack.ts";

let db: TestDb;
let stack: Stack;
let alice: TestUser;
let bob: TestUser;

const TABLE_FIELDS = "name columns { name type nullable default primaryKey } approximateRows exactRows sizeBytes createdAt updatedAt";

const define = (u: TestUser, name: string, columns: object[], ifNotExists?: boolean) =>
  gql(stack.url, `mutation($n:String!,$c:[ColumnSpecInput]!,$i:Boolean){defineTable(input:{name:$n,columns:$c,ifNotExists:$i}){table{${TABLE_FIELDS}}}}`,
    { n: name, c: columns, i: ifNotExists }, u.token);

const tables = async (u: TestUser, exact = false) => {
  const r = await gql(stack.url, `query($e:Boolean){tables(exactCounts:$e){nodes{${TABLE_FIELDS}}}}`, { e: exact }, u.token);
  if (r.errors) throw new Error(JSON.stringify(r.errors));
  return r.data.tables.nodes as any[];
};

const rows = (u: TestUser, args: Record<string, unknown>) =>
  gql(stack.url, `query($r:String!,$f:Int,$o:Int,$ob:[String],$w:JSON,$c:Boolean){rows(relation:$r,first:$f,offset:$o,orderBy:$ob,where:$w,withTotalCount:$c)}`,
    { r: args.relation, f: args.first, o: args.offset, ob: args.orderBy, w: args.where, c: args.withTotalCount }, u.token);

/** Every table of a schema with its columns, as the catalog says (to prove nothing changed). */
async function catalog(schema: string) {
  const { rows } = await db.admin.query(
    `select c.relname, string_agg(a.attname || ':' || format_type(a.atttypid, a.atttypmod) || ':' || a.attnotnull, ',' order by a.attnum) as cols
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
       left join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
      where n.nspname = $1 group by c.relname order by c.relname`, [schema]);
  return rows;
}

/** Runs `fn` as the user would in psql: a login as their own role (enableDatabaseLogin). */
async function asPsql(u: TestUser, sql: string) {
  const r = await gql(stack.url, `mutation{enableDatabaseLogin(input:{}){uri}}`, {}, u.token);
  const uri = new URL(r.data.enableDatabaseLogin.uri);
  const admin = new URL(db.adminUrl);
  uri.hostname = admin.hostname; uri.port = admin.port; uri.pathname = admin.pathname;
  const c = new pg.Client({ connectionString: uri.toString() });
  await c.connect();
  try { return await c.query(sql); } finally { await c.end(); }
}

test.before(async () => {
  db = await createTestDb();
  stack = await startStack(db);
  alice = await signUp(stack.url);
  bob = await signUp(stack.url);
});
test.after.always(async () => {
  await stack?.stop();
  await db?.drop();
});

test.serial("defineTable creates a table of the caller's own role with every allowed type", async (t) => {
  const types = ["text", "varchar(20)", "integer", "bigint", "smallint", "numeric(10,2)", "numeric", "real", "double precision",
    "boolean", "date", "time", "timestamp", "timestamptz", "interval", "uuid", "json", "jsonb", "bytea", "text[]", "integer[]", "Timestamp With Time Zone"];
  const columns = [
    { name: "id", type: "bigint", primaryKey: true, default: "identity" },
    ...types.map((type, i) => ({ name: `c${i}`, type })),
    { name: "made", type: "timestamptz", nullable: false, default: "now()" },
    { name: "code", type: "text", unique: true, default: "x'); drop table y; --" },
  ];
  const r = await define(alice, "everything", columns);
  t.is(r.errors, undefined, JSON.stringify(r.errors));
  const tbl = r.data.defineTable.table;
  t.is(tbl.name, "everything");
  t.deepEqual(tbl.columns[0], { name: "id", type: "bigint", nullable: false, default: null, primaryKey: true });
  t.deepEqual(tbl.columns.slice(1, -2).map((c: any) => c.type), [
    "text", "character varying(20)", "integer", "bigint", "smallint", "numeric(10,2)", "numeric", "real", "double precision",
    "boolean", "date", "time without time zone", "timestamp without time zone", "timestamp with time zone", "interval", "uuid",
    "json", "jsonb", "bytea", "text[]", "integer[]", "timestamp with time zone"]);
  t.like(tbl.columns.at(-2), { name: "made", nullable: false, default: "now()" });
  // A default is a quoted literal, never SQL: the text is stored as the value.
  t.like(tbl.columns.at(-1), { name: "code", default: "'x''); drop table y; --'::text" });
  const owner = await db.admin.query("select tableowner from pg_tables where schemaname = $1 and tablename = 'everything'", [alice.handle]);
  t.is(owner.rows[0].tableowner, alice.roleName);
  t.truthy(tbl.createdAt);
});

test.serial("defineTable refuses bad names, types, columns and defaults, creating nothing", async (t) => {
  const before = await catalog(alice.handle);
  const cases: Array<[string, object[], string]> = [
    ["Bad Name", [{ name: "a", type: "text" }], "TDT01"],
    ["1abc", [{ name: "a", type: "text" }], "TDT01"],
    ["a".repeat(64), [{ name: "a", type: "text" }], "TDT01"],
    ['x"; drop table everything; --', [{ name: "a", type: "text" }], "TDT01"],
    ["ok1", [{ name: "A b", type: "text" }], "TDT01"],
    ["ok1", [{ name: "a", type: "money" }], "TDT02"],
    ["ok1", [{ name: "a", type: "text; drop table everything" }], "TDT02"],
    ["ok1", [{ name: "a", type: "serial" }], "TDT02"],
    ["ok1", [{ name: "a", type: "integer[][]" }], "TDT02"],
    ["ok1", [{ name: "a", type: "varchar(0)" }], "TDT02"],
    ["ok1", [{ name: "a", type: "numeric(5,9)" }], "TDT02"],
    ["ok1", [], "TDT05"],
    ["ok1", [{ name: "a", type: "text" }, { name: "a", type: "integer" }], "TDT05"],
    ["ok1", [{ name: "a", type: "integer", default: "abc" }], "TDT05"],
    ["ok1", [{ name: "a", type: "text", default: "identity" }], "TDT05"],
    ["ok1", [{ name: "ctid", type: "text" }], "TDT05"],
    ["everything", [{ name: "a", type: "text" }], "TDT03"],
  ];
  for (const [name, cols, code] of cases) {
    const r = await define(alice, name, cols);
    t.is(errCode(r), code, `${name} ${JSON.stringify(cols)}: ${JSON.stringify(r.errors)}`);
  }
  t.deepEqual(await catalog(alice.handle), before);
  // ifNotExists returns the existing table unchanged.
  const again = await define(alice, "everything", [{ name: "a", type: "text" }], true);
  t.is(again.errors, undefined);
  t.is(again.data.defineTable.table.columns[0].name, "id");
  t.deepEqual(await catalog(alice.handle), before);
});

test.serial("alterTable drops, renames and adds columns all or nothing", async (t) => {
  await define(alice, "things", [{ name: "id", type: "integer", primaryKey: true }, { name: "a", type: "text" }, { name: "b", type: "text" }]);
  const alter = (args: string) => gql(stack.url, `mutation{alterTable(input:{name:"things",${args}}){table{updatedAt columns{name type}}}}`, {}, alice.token);
  const before = await catalog(alice.handle);
  const created = (await tables(alice)).find((x) => x.name === "things");
  for (const [args, code] of [
    [`dropColumns:["b"], renameColumns:[{name:"nope", newName:"x"}]`, "TDT07"],
    [`addColumns:[{name:"c", type:"text"}], dropColumns:["zzz"]`, "TDT07"],
    [`renameColumns:[{name:"a", newName:"B-ad"}]`, "TDT01"],
    [`renameColumns:[{name:"a", newName:"b"}]`, "TDT05"],
    [`addColumns:[{name:"c", type:"money"}]`, "TDT02"],
    [`addColumns:[{name:"a", type:"text"}]`, "TDT05"],
    [`addColumns:[{name:"c", type:"text", nullable:false}], dropColumns:["b"]`, "TDT05"],
    [`dropColumns:[]`, "TDT05"],
  ] as const) {
    await db.admin.query(`insert into ${alice.handle}.things values (1, 'x', 'y') on conflict do nothing`);
    const r = await alter(args);
    t.is(errCode(r), code, `${args}: ${JSON.stringify(r.errors)}`);
    t.deepEqual(await catalog(alice.handle), before, args);
  }
  const r = await alter(`dropColumns:["b"], renameColumns:[{name:"a", newName:"title"}], addColumns:[{name:"n", type:"integer", default:"0"}]`);
  t.is(r.errors, undefined, JSON.stringify(r.errors));
  t.deepEqual(r.data.alterTable.table.columns, [{ name: "id", type: "integer" }, { name: "title", type: "text" }, { name: "n", type: "integer" }]);
  t.true(new Date(r.data.alterTable.table.updatedAt) >= new Date(created.updatedAt));
});

test.serial("renameTable renames; an existing or invalid new name is refused", async (t) => {
  await define(alice, "old_name", [{ name: "a", type: "text" }]);
  const rename = (n: string, nn: string) => gql(stack.url, `mutation($n:String!,$nn:String!){renameTable(input:{name:$n,newName:$nn}){table{name}}}`, { n, nn }, alice.token);
  const before = await catalog(alice.handle);
  t.is(errCode(await rename("old_name", "everything")), "TDT03");
  t.is(errCode(await rename("old_name", "New Name")), "TDT01");
  t.is(errCode(await rename("missing", "x")), "TDT04");
  t.deepEqual(await catalog(alice.handle), before);
  const r = await rename("old_name", "new_name");
  t.is(r.data.renameTable.table.name, "new_name");
});

test.serial("dropTable refuses while views depend on the table, naming them; cascade drops them too", async (t) => {
  await define(alice, "base", [{ name: "a", type: "integer" }]);
  await asPsql(alice, "create view v_one as select a from base; create materialized view v_two as select count(*) from base");
  const drop = (cascade?: boolean) => gql(stack.url, `mutation($c:Boolean){dropTable(input:{name:"base",cascade:$c}){dropped}}`, { c: cascade }, alice.token);
  const before = await catalog(alice.handle);
  const r = await drop();
  t.is(errCode(r), "TDT06");
  t.regex(r.errors![0].message, /v_one/);
  t.regex(r.errors![0].message, /v_two/);
  t.deepEqual(await catalog(alice.handle), before);
  // Dropping a column a view reads is refused the same way.
  const col = await gql(stack.url, `mutation{alterTable(input:{name:"base",dropColumns:["a"]}){table{name}}}`, {}, alice.token);
  t.is(errCode(col), "TDT06");
  t.regex(col.errors![0].message, /v_one/);
  t.deepEqual(await catalog(alice.handle), before);
  const ok = await drop(true);
  t.is(ok.data.dropTable.dropped, true);
  const left = (await catalog(alice.handle)).map((x: any) => x.relname);
  t.false(left.includes("base"));
  t.false(left.includes("v_one"));
  t.false(left.includes("v_two"));
  t.is(errCode(await drop()), "TDT04");
});

test.serial("tables lists the caller's tables, psql-made ones too, with counts, size and timestamps", async (t) => {
  await asPsql(alice, "create table from_psql (id int primary key, note text); insert into from_psql select g, 'n' || g from generate_series(1, 50) g");
  let list = await tables(alice);
  const p = list.find((x) => x.name === "from_psql");
  t.truthy(p, "a table made in psql is listed");
  t.deepEqual(p.columns, [
    { name: "id", type: "integer", nullable: false, default: null, primaryKey: true },
    { name: "note", type: "text", nullable: true, default: null, primaryKey: false },
  ]);
  t.is(p.exactRows, null, "exact counts only on request");
  t.true(Number(p.sizeBytes) > 0);
  await db.admin.query(`analyze ${alice.handle}.from_psql`);
  list = await tables(alice, true);
  const q = list.find((x) => x.name === "from_psql");
  t.is(q.exactRows, "50");
  t.is(q.approximateRows, "50");
  // Any API change records psql-made tables (first seen) in the metadata.
  await define(alice, "another", [{ name: "a", type: "text" }]);
  t.truthy((await tables(alice)).find((x) => x.name === "from_psql").createdAt);
  t.deepEqual(list.map((x) => x.name), [...list.map((x) => x.name)].sort());
  // Bob sees none of them.
  t.deepEqual(await tables(bob), []);
});

test.serial("rows reads a table or view with paging, ordering and an equality filter", async (t) => {
  await define(alice, "pets", [{ name: "id", type: "integer" }, { name: "kind", type: "text" }, { name: "born", type: "date" }, { name: "tags", type: "jsonb" }]);
  await db.admin.query(`insert into ${alice.handle}.pets values (1,'cat','2020-01-01','{"a":1}'),(2,'dog','2021-01-01',null),(3,'cat',null,'[1]'),(4,'fish','2022-02-02',null)`);
  let r = await rows(alice, { relation: "pets", orderBy: ["-id"], first: 2, offset: 1 });
  t.is(r.errors, undefined, JSON.stringify(r.errors));
  t.deepEqual(r.data.rows, {
    totalCount: 4,
    columns: [{ name: "id", type: "integer" }, { name: "kind", type: "text" }, { name: "born", type: "date" }, { name: "tags", type: "jsonb" }],
    rows: [{ id: 3, kind: "cat", born: null, tags: [1] }, { id: 2, kind: "dog", born: "2021-01-01", tags: null }],
  });
  r = await rows(alice, { relation: "pets", where: { kind: "cat", born: "2020-01-01" } });
  t.deepEqual(r.data.rows.rows.map((x: any) => x.id), [1]);
  t.is(r.data.rows.totalCount, 1);
  r = await rows(alice, { relation: "pets", where: { born: null }, withTotalCount: false });
  t.deepEqual(r.data.rows.rows.map((x: any) => x.id), [3]);
  t.is(r.data.rows.totalCount, null);
  r = await rows(alice, { relation: "pets", where: { tags: { a: 1 } } });
  t.deepEqual(r.data.rows.rows.map((x: any) => x.id), [1]);
  // A where value is a value, never SQL.
  r = await rows(alice, { relation: "pets", where: { kind: "cat' or '1'='1" } });
  t.deepEqual(r.data.rows.rows, []);
  await asPsql(alice, "create view cats as select id, born from pets where kind = 'cat'");
  r = await rows(alice, { relation: "cats", orderBy: ["id"] });
  t.deepEqual(r.data.rows.rows.map((x: any) => x.id), [1, 3]);

  t.is(errCode(await rows(alice, { relation: "nope" })), "TDT04");
  t.is(errCode(await rows(alice, { relation: "pets", orderBy: ["id; drop table pets"] })), "TDT07");
  t.is(errCode(await rows(alice, { relation: "pets", where: { nope: 1 } })), "TDT07");
  t.is(errCode(await rows(alice, { relation: "pets", where: { id: "x" } })), "TDT08");
  t.is(errCode(await rows(alice, { relation: "pets", where: [1] })), "TDT08");
  t.is(errCode(await rows(alice, { relation: "pets", first: 5000 })), "TDT08");
  t.is(errCode(await rows(alice, { relation: "pets", offset: -1 })), "TDT08");
});

test.serial("another user can neither read, alter, rename nor drop a table that is not theirs (TDT04, as if missing)", async (t) => {
  const before = await catalog(alice.handle);
  t.is(errCode(await rows(bob, { relation: "pets" })), "TDT04");
  t.is(errCode(await rows(bob, { relation: `${alice.handle}.pets` })), "TDT04");
  t.is(errCode(await gql(stack.url, `mutation{alterTable(input:{name:"pets",dropColumns:["kind"]}){table{name}}}`, {}, bob.token)), "TDT04");
  t.is(errCode(await gql(stack.url, `mutation{renameTable(input:{name:"pets",newName:"mine"}){table{name}}}`, {}, bob.token)), "TDT04");
  t.is(errCode(await gql(stack.url, `mutation{dropTable(input:{name:"pets"}){dropped}}`, {}, bob.token)), "TDT04");
  t.deepEqual(await catalog(alice.handle), before);
  // Bob may have a table of the same name in his own schema.
  const r = await define(bob, "pets", [{ name: "x", type: "text" }]);
  t.is(r.errors, undefined);
  t.deepEqual(await catalog(alice.handle), before);
});
