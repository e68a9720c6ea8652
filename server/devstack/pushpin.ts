/**
 * One Pushpin instance from the project's `pushpin.conf` template: rendered
 * into its own folder under the data dir (run/log dirs, ports, sig_key), then
 * started in the foreground as a child (`pushpin --config …`).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync, openSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../config.ts";
import { logger } from "../log.ts";

export interface PushpinOptions {
  id: string;              // instance id: folder name and ipc prefix
  dataDir: string;
  httpPort: number;
  publishPort: number;
  zmqBase: number;         // push_in = base, sub = base+2, command = base+3
  origin: string;          // host:port of the server
  sigKey: string;
  readyTimeoutMs?: number; // default 30 s
}

export interface Pushpin {
  child: ChildProcess;
  publishUrl: string;
  clientUrl: string;
  stop: () => Promise<void>;
}

function render(template: string, vars: Record<string, string | number>): string {
  return template.replace(/\{\{([A-Z_]+)\}\}/g, (_, k) => {
    if (!(k in vars)) throw new Error(`pushpin template: no value for {{${k}}}`);
    return String(vars[k]);
  });
}

/** Kill every process whose command line mentions this instance's folder (Pushpin's services). */
export function killInstanceProcesses(dir: string) {
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    if (Number(pid) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (cmd.includes(dir + "/")) process.kill(Number(pid), "SIGKILL");
    } catch { /* exited meanwhile, or not ours to read */ }
  }
}

export async function startPushpin(o: PushpinOptions): Promise<Pushpin> {
  const dir = join(o.dataDir, `pushpin-${o.id}`);
  const rundir = join(dir, "run");
  const logdir = join(dir, "log");
  mkdirSync(rundir, { recursive: true });
  mkdirSync(logdir, { recursive: true });
  const vars = {
    RUNDIR: rundir, LOGDIR: logdir, IPC_PREFIX: `tdc-${o.id}-`, HTTP_PORT: o.httpPort,
    PUBLISH_PORT: o.publishPort, PUSH_IN_PORT: o.zmqBase, PUSH_SUB_PORT: o.zmqBase + 2,
    COMMAND_PORT: o.zmqBase + 3, SIG_KEY: o.sigKey, ORIGIN: o.origin,
  };
  writeFileSync(join(dir, "pushpin.conf"), render(readFileSync(join(ROOT, "pushpin.conf"), "utf8"), vars), { mode: 0o600 });
  writeFileSync(join(dir, "routes"), render(readFileSync(join(ROOT, "pushpin.routes"), "utf8"), vars));
  const out = openSync(join(logdir, "pushpin.out"), "a");
  // Pushpin's runner starts condure, zurl, proxy and handler, each in a process group of its
  // own. Losing the runner (crash, kill -9) must not leave them serving on our ports: they are
  // found by this instance's folder in their command lines and killed.
  const child = spawn("pushpin", ["--config", join(dir, "pushpin.conf"), "--merge-output"], {
    stdio: ["ignore", out, out], detached: true,
  });
  const killGroup = (sig: NodeJS.Signals) => {
    try { process.kill(child.pid!, sig); } catch { /* gone */ }
    if (sig === "SIGKILL") killInstanceProcesses(dir);
  };
  let exited = false;
  child.on("exit", () => { exited = true; killInstanceProcesses(dir); });
  const clientUrl = `http://127.0.0.1:${o.httpPort}`;
  const publishUrl = `http://127.0.0.1:${o.publishPort}/publish/`;
  // Ready when both the client port and the publish port answer.
  const deadline = Date.now() + (o.readyTimeoutMs ?? 30_000);
  for (;;) {
    if (exited) throw new Error(`pushpin exited during startup (see ${join(logdir, "pushpin.out")})`);
    try {
      // `connection: close`: a probe's socket must not stay in fetch's pool, where the next real
      // request could pick it up after Pushpin dropped it during startup ("fetch failed").
      const r = await fetch(publishUrl, { method: "POST", headers: { "content-type": "application/json", connection: "close" }, body: '{"items":[]}' });
      await r.arrayBuffer();
      const c = await fetch(clientUrl + "/__pushpin_probe", { headers: { connection: "close" }, signal: AbortSignal.timeout(2000) }).catch(() => null);
      if (c) { await c.arrayBuffer().catch(() => {}); break; }
    } catch { /* not yet */ }
    if (Date.now() > deadline) {
      // Nobody gets a handle on an instance that failed to start: stop its services here, or
      // they keep running (one that proxied to its own port burned a core for minutes in CI).
      killGroup("SIGKILL");
      throw new Error(`pushpin did not become ready within ${Math.round((o.readyTimeoutMs ?? 30_000) / 1000)} s (see ${logdir})`);
    }
    await new Promise((r) => setTimeout(r, 150));
  }
  logger.info({ id: o.id, port: o.httpPort, publish: publishUrl }, "pushpin ready");
  return {
    child, publishUrl, clientUrl,
    stop: () => new Promise<void>((res) => {
      if (exited) return res();
      const t = setTimeout(() => killGroup("SIGKILL"), 5000);
      child.once("exit", () => { clearTimeout(t); res(); });
      killGroup("SIGTERM");
    }),
  };
}
