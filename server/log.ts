/**
 * Structured JSON logs. Secrets never reach a log line: the redact list covers
 * the places they could appear, and connection strings are logged through
 * `safeUrl`, which drops the password.
 */
import { pino } from "pino";
import { config } from "./config.ts";

export const logger = pino({
  level: config.logLevel,
  base: { svc: process.env.TDC_SERVICE || "tinydevcrm" },
  redact: {
    paths: [
      "password", "*.password", "token", "*.token", "jwt", "*.jwt",
      "req.headers.authorization", "headers.authorization", "authorization",
      "req.query.access_token", "query.access_token", "connectionString", "*.connectionString",
    ],
    censor: "[redacted]",
  },
});

/** A connection string with the password removed, fit for logs. */
export function safeUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "[unparseable url]";
  }
}
