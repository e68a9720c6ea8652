/**
 * The origin server, behind Pushpin. Read top to bottom, this is the whole
 * HTTP surface: health, auth, GraphQL (PostGraphile), then the routes later
 * capabilities add (imports/exports, event streams).
 */
import express from "express";
import { createServer } from "node:http";
import { config } from "./config.ts";
import { logger } from "./log.ts";
import { makePool } from "./pools.ts";
import { installHealth } from "./health.ts";
import { authenticate } from "./auth.ts";
import { installPostgraphile } from "./postgraphile.ts";
import { installErrorHandler } from "./errors.ts";
import { installTables } from "./routes/tables.ts";
import { installExamples } from "./examples.ts";
import { installStream } from "./routes/stream.ts";

export interface ServerOptions {
  port?: number;
  host?: string;
  authenticatorUrl?: string;
  publishUrls?: string[];
  gripSigKey?: string;
}

export async function startServer(opts: ServerOptions = {}) {
  const authenticatorUrl = opts.authenticatorUrl ?? config.authenticatorUrl;
  if (!authenticatorUrl) throw new Error("TDC_AUTHENTICATOR_URL is not set (npm start sets it for you)");
  const publishUrls = opts.publishUrls ?? config.publishUrls;
  const pool = makePool(authenticatorUrl, "tdc-server");
  const app = express();
  app.disable("x-powered-by");
  const server = createServer(app);
  // Imports of up to 1 GiB may stream for longer than Node's default 5-minute request timeout.
  server.requestTimeout = 60 * 60 * 1000;

  installHealth(app, pool, publishUrls);
  installStream(app, pool, { gripSigKey: opts.gripSigKey ?? config.gripSigKey });
  app.use(["/graphql"], authenticate(pool));
  await installPostgraphile(app, server, pool);
  installTables(app, pool);
  installExamples(app);
  installErrorHandler(app);

  await new Promise<void>((res) => server.listen(opts.port ?? config.serverPort, opts.host ?? config.serverHost, res));
  const addr = server.address() as { port: number };
  logger.info({ port: addr.port }, "server listening");
  let closing: Promise<void> | null = null;
  return {
    port: addr.port, app, server, pool,
    // Idempotent: a terminal's Ctrl-C and then the supervisor's SIGTERM both ask.
    close: () => (closing ??= (async () => {
      server.closeAllConnections?.();
      await new Promise<void>((r) => server.close(() => r()));
      await pool.end();
    })()),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const s = await startServer();
  for (const sig of ["SIGINT", "SIGTERM"] as const) process.on(sig, () => s.close().then(() => process.exit(0)));
}
