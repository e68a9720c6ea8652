/**
 * User SQL (view definitions, ad-hoc queries) judged by PostgreSQL's own
 * parser (libpg-query) before anything reaches the database: exactly one
 * statement, a plain read-only query (SELECT / VALUES / TABLE, or WITH whose
 * parts are all plain SELECTs, at any depth), no SELECT INTO, no FOR UPDATE,
 * and none of the few side-effecting functions privileges do not stop. What
 * the parser cannot judge (which tables, which functions) is left to the
 * user's own privileges: the SQL runs as the user's role (docs/views.md).
 */
import { parse } from "libpg-query";

export class UserSqlError extends Error {
  constructor(message: string, public code: string, public detail?: string) {
    super(message);
    this.name = "UserSqlError";
  }
}

/** Functions refused by name: their effects outlive the query, and no privilege stops them. */
const FORBIDDEN_FUNCTIONS: Array<[RegExp, string]> = [
  [/^pg_notify$/, "sends notifications"],
  [/^set_config$/, "changes settings"],
  [/^(lo_.*|loread|lowrite)$/, "works on large objects"],
  [/^pg_(try_)?advisory_.*$/, "takes advisory locks"],
  [/^dblink.*$/, "connects to other databases"],
];

const STATEMENT_NAMES: Record<string, string> = {
  InsertStmt: "INSERT", UpdateStmt: "UPDATE", DeleteStmt: "DELETE", MergeStmt: "MERGE",
  CreateStmt: "CREATE TABLE", CreateTableAsStmt: "CREATE TABLE AS", DropStmt: "DROP", TruncateStmt: "TRUNCATE",
  VariableSetStmt: "SET", VariableShowStmt: "SHOW", TransactionStmt: "a transaction command", CopyStmt: "COPY",
  ExplainStmt: "EXPLAIN", DoStmt: "DO", CallStmt: "CALL", NotifyStmt: "NOTIFY", ListenStmt: "LISTEN",
  LockStmt: "LOCK", GrantStmt: "GRANT", GrantRoleStmt: "GRANT", AlterRoleStmt: "ALTER ROLE",
  ViewStmt: "CREATE VIEW", CreateFunctionStmt: "CREATE FUNCTION", AlterTableStmt: "ALTER TABLE",
  RefreshMatViewStmt: "REFRESH", PrepareStmt: "PREPARE", ExecuteStmt: "EXECUTE", DeclareCursorStmt: "DECLARE",
  VacuumStmt: "VACUUM", DiscardStmt: "DISCARD", LoadStmt: "LOAD",
};

function lineCol(sql: string, pos0: number): { line: number; column: number } {
  const before = sql.slice(0, pos0);
  const line = before.split("\n").length;
  return { line, column: pos0 - before.lastIndexOf("\n") };
}

/** Walk every node of the parse tree: visit(kind, node) for each `{Kind: {...}}` object. */
function walk(node: unknown, visit: (kind: string, body: any) => void): void {
  if (Array.isArray(node)) {
    for (const n of node) walk(n, visit);
  } else if (node && typeof node === "object") {
    for (const [k, v] of Object.entries(node)) {
      if (/^[A-Z]/.test(k) && v && typeof v === "object" && !Array.isArray(v)) visit(k, v);
      walk(v, visit);
    }
  }
}

function funcName(body: any): string {
  const parts: any[] = body.funcname ?? [];
  const last = parts[parts.length - 1];
  return String(last?.String?.sval ?? "");
}

/**
 * Throws UserSqlError (TDV04 syntax, TDV05 not one statement, TDV06 not a
 * read-only query, TDV07 forbidden function, TDV12 empty/too long) unless
 * `sql` is one plain read-only query.
 */
export async function validateUserSql(sql: unknown): Promise<void> {
  if (typeof sql !== "string" || sql.trim() === "") throw new UserSqlError("The query is empty", "TDV12");
  if (sql.length > 100_000) throw new UserSqlError("The query is longer than 100000 characters", "TDV12");
  let tree: any;
  try {
    tree = await parse(sql);
  } catch (e: any) {
    const d = e?.sqlDetails;
    if (d && typeof d.cursorPosition === "number") {
      const { line, column } = lineCol(sql, d.cursorPosition);
      throw new UserSqlError(`Syntax error at position ${d.cursorPosition + 1} (line ${line}, column ${column}): ${d.message}`, "TDV04");
    }
    throw new UserSqlError(`Syntax error: ${e?.message ?? e}`, "TDV04");
  }
  const stmts: any[] = tree?.stmts ?? [];
  if (stmts.length === 0) throw new UserSqlError("The query has no statement (only comments or semicolons)", "TDV05");
  if (stmts.length > 1) {
    throw new UserSqlError(`Exactly one statement is allowed; this has ${stmts.length} (a ';' ends a statement)`, "TDV05");
  }
  const [kind] = Object.keys(stmts[0].stmt ?? {});
  if (kind !== "SelectStmt") {
    const what = STATEMENT_NAMES[kind] ?? kind?.replace(/Stmt$/, "") ?? "unknown";
    throw new UserSqlError(`Only a read-only query is allowed (SELECT, VALUES, TABLE or WITH ... SELECT), not ${what}`, "TDV06");
  }
  walk(stmts[0].stmt, (k, body) => {
    if (STATEMENT_NAMES[k] || (/Stmt$/.test(k) && k !== "SelectStmt")) {
      throw new UserSqlError(`Only read-only queries are allowed: a WITH part or subquery may not be ${STATEMENT_NAMES[k] ?? k}`, "TDV06");
    }
    if (k === "SelectStmt") {
      if (body.intoClause) throw new UserSqlError("SELECT ... INTO creates a table: not allowed in a read-only query", "TDV06");
      if (body.lockingClause) throw new UserSqlError("FOR UPDATE/SHARE locks rows: not allowed in a read-only query", "TDV06");
    }
    if (k === "CommonTableExpr" && !body.ctequery?.SelectStmt) {
      throw new UserSqlError(`WITH part "${body.ctename}" is not a plain SELECT (data-modifying WITH is not allowed)`, "TDV06");
    }
    if (k === "FuncCall") {
      const name = funcName(body).toLowerCase();
      for (const [re, why] of FORBIDDEN_FUNCTIONS) {
        if (re.test(name)) throw new UserSqlError(`Function ${name}() ${why}: not allowed in views and queries`, "TDV07");
      }
    }
  });
}
