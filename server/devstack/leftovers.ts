/**
 * Processes an `npm start` left behind when it was killed outright (kill -9, a crashed terminal):
 * Postgres and Pushpin run in process groups of their own and the server and worker do not watch
 * their parent, so they keep running — holding the ports and the data folder, and the next start
 * failed with "pushpin exited during startup". start.ts records what it started in
 * <data>/children.json; a start that finds the previous supervisor dead stops those processes
 * first (each checked by its command line, so a recycled pid is never touched).
 */
import { existsSync, readFileSync, writeFileSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "../config.ts";
import { logger } from "../log.ts";

type Name = "server" | "worker" | "pushpin" | "postgres";
const ORDER: Name[] = ["server", "worker", "pushpin", "postgres"];

export function childrenFile(dataDir: string) { return join(dataDir, "children.json"); }

/** The recorded pids; an unreadable record (a crash mid-write) counts as none. */
function recorded(f: string): Partial<Record<Name, number>> {
  try { return existsSync(f) ? JSON.parse(readFileSync(f, "utf8")) : {}; } catch { return {}; }
}

/** Record a started child (pushpin: its process group leader). */
export function recordChild(dataDir: string, name: Name, pid: number | undefined) {
  if (!pid) return;
  const f = childrenFile(dataDir);
  writeFileSync(f, JSON.stringify({ ...recorded(f), [name]: pid }));
}

/** The process's command line; "" once it is gone (or a zombie waiting to be reaped). */
function cmdline(pid: number): string {
  try { return readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " "); } catch { return ""; }
}

/** Stop what a previous, killed supervisor left running; forget the record. */
export async function stopLeftovers(dataDir: string) {
  const f = childrenFile(dataDir);
  if (!existsSync(f)) return;
  const pids = recorded(f);
  // What each one's command line must contain to be ours.
  const marks: Record<Name, string> = {
    server: join(ROOT, "server/index.ts"), worker: join(ROOT, "worker/index.ts"),
    pushpin: join(dataDir, "pushpin-main", "pushpin.conf"), postgres: join(dataDir, "pg", "pgdata"),
  };
  for (const name of ORDER) {
    const pid = pids[name];
    if (!pid || !cmdline(pid).includes(marks[name])) continue;
    logger.warn({ component: name, pid }, "stopping a process left running by an npm start that did not stop cleanly");
    try {
      if (name === "pushpin") process.kill(-pid, "SIGTERM");        // its services too
      else process.kill(pid, name === "postgres" ? "SIGINT" : "SIGTERM"); // Postgres: fast shutdown
    } catch { continue; }
    const deadline = Date.now() + 30_000;
    while (cmdline(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    if (cmdline(pid)) {
      try { process.kill(name === "pushpin" ? -pid : pid, "SIGKILL"); } catch { /* gone */ }
    }
  }
  unlinkSync(f);
}
