/**
 * The last stop for errors in our HTTP routes: JSON with a stable code, never
 * an HTML page or a stack. A lost database connection is a 503 (retry), not a 500.
 */
import type { Express, Request, Response, NextFunction } from "express";
import { logger } from "./log.ts";

/** Errors that mean "the database is away" (restart, network), not "your request is wrong". */
export function isUnavailable(e: any): boolean {
  const code = String(e?.code ?? "");
  return code.startsWith("08") || code === "57P01" || code === "57P02" || code === "57P03" || ["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "EAI_AGAIN"].includes(code)
    || /Connection terminated|not queryable|ECONNREFUSED|ECONNRESET|the database system is (starting up|shutting down)/i.test(String(e?.message ?? ""));
}

/** Out of disk (53100) or other resources (class 53): the server's problem, said plainly. */
export function resourceError(e: any): { status: number; code: string; message: string } | null {
  const code = String(e?.code ?? "");
  if (code === "53100") return { status: 507, code: "TDX07", message: "The server is out of disk space; nothing was changed" };
  if (code.startsWith("53")) return { status: 503, code: "TDX05", message: "The server is out of resources right now; nothing was changed, try again shortly" };
  return null;
}

export function installErrorHandler(app: Express) {
  app.use((err: any, req: Request, res: Response, _next: NextFunction) => {
    if (res.headersSent) { res.destroy(); return; }
    if (isUnavailable(err)) {
      res.status(503).set("retry-after", "1").json({ error: { code: "TDX01", message: "The database is unavailable right now; try again shortly" } });
      return;
    }
    const res53 = resourceError(err);
    if (res53) {
      res.status(res53.status).json({ error: { code: res53.code, message: res53.message } });
      return;
    }
    if (err?.type === "entity.too.large" || err?.status === 413) {
      res.status(413).json({ error: { code: "TDX13", message: "Request body too large" } });
      return;
    }
    if (typeof err?.status === "number" && err.status >= 400 && err.status < 500) {
      res.status(err.status).json({ error: { code: "TDX40", message: String(err.message ?? "Bad request") } });
      return;
    }
    const id = Math.random().toString(36).slice(2, 10);
    logger.error({ errorId: id, err: String(err?.stack ?? err), path: req.path }, "unhandled error");
    res.status(500).json({ error: { code: "TDX00", message: `Internal error (id: ${id})` } });
  });
}
