/**
 * The real `npm start` supervisor (server/devstack/start.ts) on a fresh data
 * folder and free ports, for end-to-end tests. The embedded cluster reuses the
 * test run's secrets: role passwords are cluster-wide per cluster, and keeping
 * one set keeps every cluster of this run consistent.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, copyFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../../server/config.ts";
import { freePort, freePortRange } from "./stack.ts";

export interface Devstack {
  env: Record<string, string>;
  url: string;          // Pushpin (the client URL)
  serverUrl: string;    // the origin, directly
  dataDir: string;
  start: () => { child: ChildProcess; output: () => string; exited: Promise<number | null> };
}

export async function devstack(prefix = "devstack-"): Promise<Devstack> {
  const dataDir = mkdtempSync(join(process.env.TDC_TEST_DATA_DIR!, prefix));
  copyFileSync(process.env.TDC_TEST_SECRETS!, join(dataDir, "secrets.json"));
  const [pg, srv, http, pub, zmq] = [await freePort(), await freePort(), await freePort(), await freePort(), await freePortRange(4)];
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    TDC_DATA_DIR: dataDir, TDC_PG_PORT: String(pg), TDC_SERVER_PORT: String(srv), TDC_PUSHPIN_PORT: String(http),
    TDC_PUSHPIN_PUBLISH_PORT: String(pub), TDC_PUSHPIN_ZMQ_BASE: String(zmq), LOG_LEVEL: "warn",
  };
  delete env.DATABASE_URL;
  delete env.TDC_PUBLISH_URLS;
  return {
    env, dataDir, url: `http://127.0.0.1:${http}`, serverUrl: `http://127.0.0.1:${srv}`,
    start() {
      const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "server/devstack/start.ts")], { env, cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      child.stdout!.on("data", (d) => (out += d));
      child.stderr!.on("data", (d) => (out += d));
      const exited = new Promise<number | null>((res) => child.on("exit", (c) => res(c)));
      return { child, output: () => out, exited };
    },
  };
}
