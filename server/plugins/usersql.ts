/**
 * GraphQL side of user SQL: the generated createView / alterView mutations and
 * the runQuery query get a side-effect step that validates the query text with
 * PostgreSQL's parser (server/usersql.ts) BEFORE the SQL function runs (Grafast
 * makes every later step of the field depend on it, so a refused query never
 * reaches the database and nothing is created). Requests that run user SQL
 * also get a statement timeout (config.userSqlTimeoutMs), set like the role:
 * `set_config(..., true)` before the statement.
 */
import { wrapPlans } from "postgraphile/utils";
import { sideEffect } from "postgraphile/grafast";
import { Kind, type DocumentNode, type SelectionSetNode } from "postgraphile/graphql";
import { config } from "../config.ts";
import { validateUserSql } from "../usersql.ts";

const validated = (path: string[]) => (plan: any, _$source: any, fieldArgs: any) => {
  sideEffect(fieldArgs.getRaw(path), (query: unknown) => validateUserSql(query));
  return plan();
};

const UserSqlValidationPlugin = wrapPlans(
  {
    Mutation: {
      createView: validated(["input", "query"]),
      alterView: validated(["input", "query"]),
    },
    Query: {
      runQuery: validated(["query"]),
    },
  },
  { name: "UserSqlValidationPlugin" },
);

/** Top-level fields whose SQL executes user queries (and so gets the timeout). */
const USER_SQL_FIELDS = new Set(["createView", "alterView", "runQuery", "refreshView"]);

function runsUserSql(document: DocumentNode | undefined): boolean {
  const defs = document?.definitions ?? [];
  const fragments = new Map<string, SelectionSetNode>();
  for (const d of defs) if (d.kind === Kind.FRAGMENT_DEFINITION) fragments.set(d.name.value, d.selectionSet);
  // Top-level fields, also through fragments (a spread must not dodge the timeout).
  const seen = new Set<string>();
  const visit = (set: SelectionSetNode): boolean => set.selections.some((sel) => {
    if (sel.kind === Kind.FIELD) return USER_SQL_FIELDS.has(sel.name.value);
    if (sel.kind === Kind.INLINE_FRAGMENT) return visit(sel.selectionSet);
    const name = sel.name.value;
    if (seen.has(name)) return false;
    seen.add(name);
    const f = fragments.get(name);
    return f ? visit(f) : false;
  });
  return defs.some((d) => d.kind === Kind.OPERATION_DEFINITION && visit(d.selectionSet));
}

const UserSqlTimeoutPlugin: GraphileConfig.Plugin = {
  name: "UserSqlTimeoutPlugin",
  version: "1.0.0",
  grafast: {
    middleware: {
      async prepareArgs(next, event) {
        const args = await next();
        if (runsUserSql(args.document)) {
          const ctx: any = args.contextValue;
          ctx.pgSettings = { ...(ctx.pgSettings ?? {}), statement_timeout: String(config.userSqlTimeoutMs) };
        }
        return args;
      },
    },
  },
};

export const UserSqlPlugins: GraphileConfig.Plugin[] = [UserSqlValidationPlugin, UserSqlTimeoutPlugin];
