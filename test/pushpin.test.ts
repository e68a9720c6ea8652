/**
 * Pushpin as the devstack runs it: an instance that fails to become ready is stopped with all
 * of its services. (In a CI run an instance whose origin port was its own port — a port picked
 * twice — never became ready, stayed behind proxying to itself and took a core for minutes.)
 */
import test from "ava";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { freePort, freePortRange } from "./helpers/stack.ts";
import { startPushpin } from "../server/devstack/pushpin.ts";

function processesMentioning(dir: string): number[] {
  const out: number[] = [];
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      const state = /State:\s+(\w)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
      if (cmd.includes(dir + "/") && state !== "Z") out.push(Number(pid));
    } catch { /* gone */ }
  }
  return out;
}

test("a Pushpin that never becomes ready is stopped, services included", async (t) => {
  const id = "r" + randomBytes(4).toString("hex");
  const dataDir = join(process.env.TDC_TEST_DATA_DIR!, "pushpin");
  const httpPort = await freePort();
  // Its origin is its own client port: every probe loops through Pushpin until it times out.
  const start = startPushpin({ id, dataDir, httpPort, publishPort: await freePort(), zmqBase: await freePortRange(4),
    origin: `127.0.0.1:${httpPort}`, sigKey: randomBytes(16).toString("hex"), readyTimeoutMs: 4000 });
  await t.throwsAsync(start, { message: /did not become ready/ });
  const dir = join(dataDir, `pushpin-${id}`);
  const deadline = Date.now() + 5000;
  while (processesMentioning(dir).length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  t.deepEqual(processesMentioning(dir), [], "no condure, zurl, proxy or handler of that instance left");
});
