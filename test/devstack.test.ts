/**
 * `npm start` end to end (issue: foundation): the real supervisor on a fresh
 * data folder and free ports brings up Postgres+pg_cron, Pushpin, server and
 * worker; /healthz is 200 through Pushpin; a second start refuses; killing the
 * worker or Pushpin turns /healthz 503 naming it; Ctrl-C stops every child; a
 * restart keeps the data.
 */
import test from "ava";
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { mkdtempSync, existsSync, copyFileSync, readFileSync } from "node:fs";
import { ROOT } from "../server/config.ts";
import { freePort, freePortRange, gql } from "./helpers/stack.ts";
import { eventually } from "./helpers/wait.ts";

const dataDir = mkdtempSync(join(process.env.TDC_TEST_DATA_DIR!, "devstack-"));
let env: Record<string, string>;
let pushpinUrl: string;
let serverUrl: string;

test.before(async () => {
  const [pg, srv, http, pub, zmq] = [await freePort(), await freePort(), await freePort(), await freePort(), await freePortRange(4)];
  env = {
    ...process.env as Record<string, string>,
    TDC_DATA_DIR: dataDir, TDC_PG_PORT: String(pg), TDC_SERVER_PORT: String(srv), TDC_PUSHPIN_PORT: String(http),
    TDC_PUSHPIN_PUBLISH_PORT: String(pub), TDC_PUSHPIN_ZMQ_BASE: String(zmq), LOG_LEVEL: "warn",
  };
  delete env.DATABASE_URL;
  delete env.GRAPHILE_ENV;  // as on a user's machine (the test runner and ava set these)
  delete env.NODE_ENV;
  pushpinUrl = `http://127.0.0.1:${http}`;
  serverUrl = `http://127.0.0.1:${srv}`;
});

function start(): { child: ChildProcess; output: () => string; exited: Promise<number | null> } {
  // Its own process group, as in a terminal: Ctrl-C there signals the whole group.
  const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "server/devstack/start.ts")], { env, cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], detached: true });
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise<number | null>((res) => child.on("exit", (c) => res(c)));
  return { child, output: () => out, exited };
}

function childPid(parent: number, match: RegExp): number {
  const out = execFileSync("ps", ["-o", "pid=,args=", "--ppid", String(parent)], { encoding: "utf8" });
  const line = out.split("\n").find((l) => match.test(l));
  if (!line) throw new Error(`no child matching ${match} under ${parent}:\n${out}`);
  return Number(line.trim().split(/\s+/)[0]);
}

async function health(url: string) {
  const r = await fetch(url + "/healthz", { signal: AbortSignal.timeout(5000) });
  return { status: r.status, body: await r.json() };
}

test.serial("npm start: up, refuses a second start, reports dead parts, stops cleanly, keeps data", async (t) => {
  const first = start();
  try {
    await eventually(async () => (await health(pushpinUrl)).status === 200, 90_000, 300);
    const h = await health(pushpinUrl);
    t.deepEqual(Object.fromEntries(Object.entries(h.body.components).map(([k, v]: any) => [k, v.status])),
      { database: "ok", pg_cron: "ok", worker: "ok", pushpin: "ok" });
    await eventually(async () => first.output().includes("TinyDevCRM is up."), 10_000);
    t.regex(first.output(), /GraphQL\s+http:\/\/localhost:\d+\/graphql/);
    t.regex(first.output(), /psql\s+PGPASSFILE=\S+ psql "postgres:\/\/postgres@127\.0\.0\.1:\d+\/tinydevcrm"/);
    t.notRegex(first.output(), /postgres:\/\/[^@\s"]+:[^@\s"]+@/, "no password printed");

    const reg = await gql(pushpinUrl, `mutation{register(input:{email:"keep@example.com",password:"keep me please"}){user{handle}}}`);
    t.is(reg.data.register.user.handle, "keep");

    // Postgres has a process group of its own: a terminal's Ctrl-C (SIGINT to the whole group)
    // must not shut it down under the server and worker, which the supervisor stops first.
    const pgid = (pid: number) => Number(execFileSync("ps", ["-o", "pgid=", "-p", String(pid)], { encoding: "utf8" }).trim());
    t.not(pgid(childPid(first.child.pid!, /postgres -D/)), pgid(first.child.pid!));

    // A second start while this one runs says so and exits non-zero, touching nothing.
    const second = start();
    t.is(await second.exited, 1);
    t.regex(second.output(), /already running/);
    t.is((await health(pushpinUrl)).status, 200);

    // Kill the worker: /healthz turns 503 naming it.
    process.kill(childPid(first.child.pid!, /worker\/index\.ts/), "SIGKILL");
    const w = await eventually(async () => { const r = await health(pushpinUrl); return r.status === 503 && r; }, 15_000);
    t.is(w.body.components.worker.status, "down");
    t.is(w.body.components.database.status, "ok");

    // Kill Pushpin's runner (kill -9): its services go with it, and the origin's own /healthz names it.
    process.kill(childPid(first.child.pid!, /^\s*\d+\s+pushpin /), "SIGKILL");
    const p = await eventually(async () => { const r = await health(serverUrl); return r.body.components.pushpin.status === "down" && r; }, 15_000);
    t.is(p.status, 503);
  } finally {
    first.child.kill("SIGINT");
    t.is(await first.exited, 0, first.output().slice(-2000));
  }
  // Every child is gone: nothing listens on the Pushpin or server ports.
  await t.throwsAsync(fetch(serverUrl + "/healthz"));
  await t.throwsAsync(fetch(pushpinUrl + "/healthz"));

  // Restart: everything back, the user still there.
  const again = start();
  try {
    await eventually(async () => (await health(pushpinUrl)).status === 200, 90_000, 300);
    const a = await gql(pushpinUrl, `mutation{authenticate(input:{email:"keep@example.com",password:"keep me please"}){jwtToken}}`);
    t.truthy(a.data.authenticate.jwtToken, "data survived the restart");
  } finally {
    // Ctrl-C in a terminal: SIGINT to every process of the group at once. The supervisor stops the
    // server and worker before Postgres (which has a group of its own), so nothing complains.
    // Plus a second signal to the server and worker while they stop (the supervisor sends SIGTERM
    // too, sometimes after they are gone): one shutdown each, no crash (graphile-worker threw on a
    // second stop). A child already gone is fine here; the output checks below would show why.
    const children = [/worker\/index\.ts/, /server\/index\.ts/].map((m) => childPid(again.child.pid!, m));
    for (const pid of children) try { process.kill(pid, "SIGTERM"); } catch { /* gone */ }
    process.kill(-again.child.pid!, "SIGINT");
    t.is(await again.exited, 0);
  }
  // (LOG_LEVEL=warn: the output holds only warnings and errors, and a clean start and stop has none.)
  t.notRegex(again.output(), /"level":(40|50|60)/, `no warnings or errors starting or stopping:\n${again.output().slice(-2000)}`);
  // Logs are JSON lines; the only other output is the banner.
  const stray = again.output().split("\n").filter((l) => l.trim() && !l.startsWith("{") && !l.startsWith("TinyDevCRM is up.") && !l.startsWith("  "));
  t.deepEqual(stray, []);
});

test.serial("DATABASE_URL: uses that database instead of the embedded cluster, and says clearly that pg_cron is missing there", async (t) => {
  const ext = { ...env, DATABASE_URL: process.env.TDC_TEST_ADMIN_URL!, TDC_DB_NAME: `tdc_ext_${Date.now() % 100000}`,
    TDC_DATA_DIR: mkdtempSync(join(process.env.TDC_TEST_DATA_DIR!, "ext-")) };
  // Same role passwords as the test cluster's: the bootstrap (re)sets cluster-wide role passwords,
  // and fresh ones would lock out every other test file running against this cluster meanwhile.
  copyFileSync(process.env.TDC_TEST_SECRETS!, join(ext.TDC_DATA_DIR, "secrets.json"));
  const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "server/devstack/start.ts")], { env: ext, cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise((res) => child.on("exit", res));
  try {
    const h = await eventually(async () => {
      const r = await health(pushpinUrl);
      return r.body.components.database.status === "ok" && r.body.components.worker.status === "ok" && r;
    }, 60_000, 300);
    t.is(h.status, 503);
    t.is(h.body.components.pg_cron.status, "down");
    t.regex(h.body.components.pg_cron.detail, /not installed in this database/);
    t.regex(out, /pg_cron is not available in this database/);
    t.false(existsSync(join(ext.TDC_DATA_DIR, "pg")), "no embedded cluster when DATABASE_URL is set");
    // It runs without schedules rather than giving up (it used to stop after waiting 60 s for a 200).
    await eventually(async () => out.includes("TinyDevCRM is up."), 45_000, 500);
    t.regex(out, /running without: pg_cron/);
    t.is((await health(pushpinUrl)).status, 503, "still serving");
  } finally {
    child.kill("SIGINT");
    await exited;
  }
});

/** Processes of this file's stacks (other test files run servers and workers of their own meanwhile). */
function ours(): string[] {
  const env = (pid: string) => { try { return readFileSync(`/proc/${pid}/environ`, "utf8"); } catch { return ""; } };
  return execFileSync("ps", ["-eo", "pid=,args="], { encoding: "utf8" }).split("\n")
    .filter((l) => l.trim() && (l.includes(dataDir) || env(l.trim().split(/\s+/)[0]).includes(`TDC_DATA_DIR=${dataDir}\0`)));
}
/** SIGKILL whatever of this file's stacks still runs (so a failing test leaves nothing behind). */
function killOurs() {
  for (const l of ours()) try { process.kill(Number(l.trim().split(/\s+/)[0]), "SIGKILL"); } catch { /* gone */ }
}

test.serial("Ctrl-C while npm start is still starting leaves no process behind", async (t) => {
  t.deepEqual(ours(), [], "nothing of ours runs before");
  // At these delays the signal lands in different start steps (node start-up, Postgres, bootstrap,
  // Pushpin, the health wait) or after; whichever, every process started must be gone afterwards.
  for (const ms of [400, 1200, 2000, 3000]) {
    const run = start();
    await new Promise((r) => setTimeout(r, ms));
    process.kill(-run.child.pid!, "SIGINT");
    const code = await run.exited;
    t.true(code === 0 || code === null, `exit ${code} after Ctrl-C at ${ms} ms:\n${run.output().slice(-1500)}`);
    await eventually(async () => ours().length === 0, 15_000).catch(() => {});
    t.deepEqual(ours(), [], `left running after Ctrl-C at ${ms} ms`);
    killOurs();
  }
});

test.serial("npm start after one was killed outright (kill -9) stops what that one left running, then comes up", async (t) => {
  t.teardown(killOurs);  // whatever happens, nothing of this test keeps running
  const crashed = start();
  await eventually(async () => (await health(pushpinUrl)).status === 200, 90_000, 300);
  process.kill(crashed.child.pid!, "SIGKILL");
  await crashed.exited;
  t.true(ours().some((l) => l.includes("pgdata")), "Postgres outlives a killed supervisor (the case this is about)");
  const again = start();
  try {
    await eventually(async () => again.output().includes("TinyDevCRM is up."), 90_000, 300);
    t.regex(again.output(), /left running by an npm start that did not stop cleanly/);
    t.is((await health(pushpinUrl)).status, 200);
  } finally {
    process.kill(-again.child.pid!, "SIGINT");
    t.is(await again.exited, 0, again.output().slice(-2000));
  }
  await eventually(async () => ours().length === 0, 15_000).catch(() => {});
  t.deepEqual(ours(), []);
});
