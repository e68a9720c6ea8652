/**
 * Who is calling. The token (JWT or API token, from `Authorization: Bearer`
 * or `?access_token=` for EventSource) is checked by one SQL function,
 * `app_hidden.resolve_token`, which verifies signature, expiry and that the
 * session/token is not revoked, and names the Postgres role to become. There
 * is no cache: logout and revocation take effect on the next request.
 */
import type { Request, Response, NextFunction } from "express";
import type pg from "pg";
import { ROLES } from "./roles.ts";

/** `expiresAt`: when the token stops working (null: anonymous, or an API token without expiry). */
export interface Auth { role: string; userId: string | null; sessionId: string | null; expiresAt: Date | null }
export const ANONYMOUS: Auth = { role: ROLES.anonymous, userId: null, sessionId: null, expiresAt: null };

declare module "express-serve-static-core" {
  interface Request { tdcAuth?: Auth }
}

export class AuthError extends Error {
  constructor(message: string, public code: string) { super(message); }
}

export function tokenFrom(req: Request): string | null {
  const h = req.headers.authorization;
  if (h) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
    if (!m) throw new AuthError("Authorization header must be 'Bearer <token>'", "TDA01");
    return m[1];
  }
  const q = req.query?.access_token;
  if (typeof q === "string" && q) return q;
  return null;
}

export async function resolveToken(pool: pg.Pool, token: string): Promise<Auth> {
  if (token.length > 4096) throw new AuthError("token is too long", "TDA02");
  try {
    const { rows } = await pool.query("select role_name, user_id, session_id, expires_at from app_hidden.resolve_token($1)", [token]);
    const r = rows[0];
    return { role: r.role_name, userId: String(r.user_id), sessionId: r.session_id == null ? null : String(r.session_id), expiresAt: r.expires_at };
  } catch (e: any) {
    if (typeof e.code === "string" && e.code.startsWith("TDA")) throw new AuthError(e.message, e.code);
    throw e;
  }
}

/** Express middleware: sets req.tdcAuth, or answers 401 for a bad token. Anonymous when no token. */
export function authenticate(pool: pg.Pool) {
  return async (req: Request, res: Response, next: NextFunction) => {
    try {
      const token = tokenFrom(req);
      req.tdcAuth = token ? await resolveToken(pool, token) : ANONYMOUS;
      next();
    } catch (e) {
      if (e instanceof AuthError) {
        res.status(401).set("WWW-Authenticate", 'Bearer error="invalid_token"')
          .json({ error: { code: e.code, message: e.message }, errors: [{ message: e.message, extensions: { code: e.code } }] });
        return;
      }
      next(e);
    }
  };
}
