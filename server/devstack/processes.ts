/** Spawning the server and worker as children running TypeScript under this Node (22). */
import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { ROOT } from "../config.ts";

export function spawnTs(entry: string, env: Record<string, string>, opts: { inherit?: boolean } = {}): ChildProcess {
  return spawn(process.execPath, ["--import", "tsx", join(ROOT, entry)], {
    cwd: ROOT,
    // GRAPHILE_ENV set (unless the user chose one): unset, Grafast prints an unstructured warning line.
    env: { GRAPHILE_ENV: "production", ...process.env, ...env },
    stdio: opts.inherit === false ? ["ignore", "ignore", "pipe"] : ["ignore", "inherit", "inherit"],
  });
}

export function stopChild(child: ChildProcess | null | undefined, graceMs = 5000): Promise<void> {
  return new Promise((res) => {
    if (!child || child.exitCode !== null || child.signalCode !== null) return res();
    const t = setTimeout(() => child.kill("SIGKILL"), graceMs);
    child.once("exit", () => { clearTimeout(t); res(); });
    child.kill("SIGTERM");
  });
}

/** Poll `url` until it answers one of `okStatuses`; throws after timeoutMs; returns early once `quit()` says so. */
export async function waitForHttp(url: string, timeoutMs: number, okStatuses = [200], quit: () => boolean = () => false): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  while (Date.now() < deadline && !quit()) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
      last = `${r.status} ${await r.text()}`;
      if (okStatuses.includes(r.status)) return;
    } catch (e) { last = (e as Error).message; }
    await new Promise((r) => setTimeout(r, 200));
  }
  if (quit()) return;
  throw new Error(`${url} not ready after ${timeoutMs} ms (last: ${last.slice(0, 500)})`);
}
