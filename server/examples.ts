/** GET /examples/live-dashboard: the static example page (examples/live-dashboard.html). */
import type { Express } from "express";
import { join } from "node:path";
import { ROOT } from "./config.ts";

export function installExamples(app: Express) {
  app.get("/examples/live-dashboard", (_req, res) => {
    res.set("cache-control", "no-cache").sendFile(join(ROOT, "examples", "live-dashboard.html"));
  });
}
