/**
 * PostGraphile v5: the GraphQL API generated from `app_public` (what the
 * caller's role is GRANTed is what exists for them). Each request runs as the
 * role resolved by server/auth.ts. SQL errors raised with our five-character
 * codes reach the client as `extensions.code`; unexpected errors are masked.
 */
import type { Express } from "express";
import type { Server } from "node:http";
import type pg from "pg";
import { postgraphile } from "postgraphile";
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";
import { makePgService } from "postgraphile/adaptors/pg";
import { grafserv } from "postgraphile/grafserv/express/v4";
import { GraphQLError, Kind, type ValidationContext, type ASTVisitor, type SelectionSetNode } from "postgraphile/graphql";
import { depthLimit } from "@graphile/depth-limit";
import { config } from "./config.ts";
import { logger } from "./log.ts";
import { ANONYMOUS, type Auth } from "./auth.ts";
import { isUnavailable, resourceError } from "./errors.ts";
import { UserSqlPlugins } from "./plugins/usersql.ts";

// SQLSTATE classes a user can act on; anything else (internal, I/O, resources) is masked.
const USER_FACING = /^(TD|22|23|25|28|2B|40|42|44|53400|54|55|57014|P0|0A|P0001)/;

function maskError(error: GraphQLError): GraphQLError {
  const orig: any = error.originalError;
  if (!orig) return error;
  if (orig instanceof GraphQLError) return error;
  if (typeof orig.code === "string" && /^[0-9A-Z]{5}$/.test(orig.code) && USER_FACING.test(orig.code)) {
    return new GraphQLError(orig.message, {
      nodes: error.nodes, source: error.source, positions: error.positions, path: error.path, originalError: orig,
      extensions: { code: orig.code, ...(orig.detail ? { detail: orig.detail } : {}), ...(orig.hint ? { hint: orig.hint } : {}) },
    });
  }
  const exhausted = resourceError(orig);
  if (exhausted) {
    logger.error({ code: orig.code, err: String(orig.message) }, "database out of resources");
    return new GraphQLError(exhausted.message, {
      nodes: error.nodes, source: error.source, positions: error.positions, path: error.path,
      extensions: { code: exhausted.code },
    });
  }
  if (isUnavailable(orig)) {
    return new GraphQLError("The database is unavailable right now; try again shortly", {
      nodes: error.nodes, source: error.source, positions: error.positions, path: error.path,
      extensions: { code: "TDX01" },
    });
  }
  const id = Math.random().toString(36).slice(2, 10);
  logger.error({ errorId: id, err: String(orig?.message ?? orig), code: orig?.code }, "masked GraphQL error");
  return new GraphQLError(`Internal error (id: ${id})`, {
    nodes: error.nodes, source: error.source, positions: error.positions, path: error.path,
    extensions: { code: "TDX00" },
  });
}

/**
 * Naming: `id` is the row's own id (no Relay node ids to decode), and lists are
 * named after the table (`users`, not `allUsers`).
 */
const TdcNamingPlugin: GraphileConfig.Plugin = {
  name: "TdcNamingPlugin",
  version: "1.0.0",
  inflection: {
    replace: {
      nodeIdFieldName() { return "nodeId"; },
      _attributeName(previous: any, _options: any, details: any) { return previous({ ...details, skipRowId: true }); },
      allRowsConnection(_previous: any, _options: any, resource: any) {
        return this.camelCase(this.pluralize(this._singularizedResourceName(resource)));
      },
      allRowsList(_previous: any, _options: any, resource: any) {
        return this.camelCase(this.pluralize(this._singularizedResourceName(resource))) + "List";
      },
    } as any,
  },
};

/**
 * Limits on what one GraphQL document may ask for: selection depth, nested
 * lists, self-referencing cycles, and breadth (field selections, see above). The body size is capped by maxRequestLength;
 * operations that run user SQL get a statement_timeout (server/plugins/usersql.ts).
 */
/**
 * A cost limit depth limits miss: breadth. Counts field selections in an
 * operation (fragments expanded, each spread counted where used), so 10,000
 * aliases of one field are refused before anything runs.
 */
export const MAX_FIELDS = 1000;
function fieldCountLimit(context: ValidationContext): ASTVisitor {
  const count = (set: SelectionSetNode, seen: Set<string>): number => {
    let n = 0;
    for (const sel of set.selections) {
      if (sel.kind === Kind.FIELD) n += 1 + (sel.selectionSet ? count(sel.selectionSet, seen) : 0);
      else if (sel.kind === Kind.INLINE_FRAGMENT) n += count(sel.selectionSet, seen);
      else if (!seen.has(sel.name.value)) {
        const frag = context.getFragment(sel.name.value);
        if (frag) { seen.add(sel.name.value); n += count(frag.selectionSet, seen); seen.delete(sel.name.value); }
      }
      if (n > MAX_FIELDS) return n;
    }
    return n;
  };
  return {
    OperationDefinition(node) {
      const n = count(node.selectionSet, new Set());
      if (n > MAX_FIELDS) {
        context.reportError(new GraphQLError(`Operation too large: more than ${MAX_FIELDS} field selections (aliases and fragments included)`, { nodes: [node] }));
      }
    },
  };
}

const TdcLimitsPlugin: GraphileConfig.Plugin = {
  name: "TdcLimitsPlugin",
  version: "1.0.0",
  grafserv: {
    middleware: {
      setPreset(next, event) {
        event.validationRules.push(depthLimit({ maxDepth: 12, maxListDepth: 4, maxSelfReferentialDepth: 2, maxIntrospectionDepth: 16, maxDepthByFieldCoordinates: { "__Type.ofType": 10 }, revealDetails: true }));
        event.validationRules.push(fieldCountLimit);
        return next();
      },
    },
  },
};

export async function installPostgraphile(app: Express, server: Server, pool: pg.Pool) {
  const preset: GraphileConfig.Preset = {
    extends: [PostGraphileAmberPreset],
    plugins: [TdcNamingPlugin, TdcLimitsPlugin, ...UserSqlPlugins],
    pgServices: [makePgService({ pool, schemas: ["app_public"] })],
    grafserv: {
      graphqlPath: "/graphql",
      graphiql: true,
      graphiqlPath: "/graphiql",
      watch: false,
      maxRequestLength: config.maxGraphqlBytes,
      maskError,
    },
    grafast: {
      explain: false,
      context(requestContext: any) {
        const req = requestContext.expressv4?.req ?? requestContext.node?.req;
        const auth: Auth = req?.tdcAuth ?? ANONYMOUS;
        return { pgSettings: { role: auth.role, "tdc.session_id": auth.sessionId ?? "" }, tdcAuth: auth };
      },
    },
    schema: {
      // Functions are our API; no generic CRUD beyond what grants allow.
      pgForbidSetofFunctionsToReturnNull: true,
    },
  };
  const pgl = postgraphile(preset);
  const serv = pgl.createServ(grafserv);
  await serv.addTo(app, server);
  return pgl;
}
