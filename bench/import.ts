/**
 * `npm run bench:import`: CSV import through Pushpin vs psql's \copy, side by side.
 *
 * Against the fresh bench cluster (server/devstack/bench.ts), this starts the
 * real server as a child process (so its RSS can be sampled from /proc) behind
 * a real Pushpin, signs up a user, and for a generated file of 1,000,000 rows
 * (~60 MB, 5 typed columns) times, alternating, into fresh identical tables:
 *   - `psql -c "\copy ..."` (superuser, the baseline),
 *   - POST /tables/:name/import through Pushpin (append into an existing table),
 *   - POST /tables/:name/import?create=true (type inference + define + COPY),
 * then one 10,000,000-row (~600 MB) import to show the server's RSS does not
 * grow with file size. Writes bench/results/import.json and import.md.
 *
 * Options (env): BENCH_ROWS (default 1e6), BENCH_BIG_ROWS (default 1e7, 0 to skip), BENCH_REPS (default 3).
 */
import { spawnSync } from "node:child_process";
import { createReadStream, createWriteStream, readFileSync, readdirSync, statSync, writeFileSync, mkdirSync, rmSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import { loadavg } from "node:os";
import { once } from "node:events";
import { ROOT } from "../server/config.ts";
import { withDatabase } from "../server/devstack/database.ts";
import { ROLES } from "../server/roles.ts";
import { startPushpin } from "../server/devstack/pushpin.ts";
import { spawnTs, stopChild, waitForHttp } from "../server/devstack/processes.ts";
import { freePort, freePortRange } from "../test/helpers/stack.ts";

const adminUrl = process.env.TDC_BENCH_ADMIN_URL!;
const secrets = JSON.parse(readFileSync(process.env.TDC_BENCH_SECRETS!, "utf8"));
const dataDir = process.env.TDC_BENCH_DATA_DIR!;
const ROWS = Number(process.env.BENCH_ROWS ?? 1_000_000);
const BIG_ROWS = Number(process.env.BENCH_BIG_ROWS ?? 10_000_000);
const REPS = Number(process.env.BENCH_REPS ?? 3);
const SAFE_REPS = Number(process.env.BENCH_SAFE_REPS ?? 3);
const PSQL = "/usr/bin/psql";

const COLUMNS = [
  { name: "id", type: "bigint" },
  { name: "name", type: "text" },
  { name: "amount", type: "numeric(12,2)" },
  { name: "created_at", type: "timestamptz" },
  { name: "active", type: "boolean" },
];

/** Deterministic CSV: id, name, amount, timestamptz, boolean (~60 bytes a row). */
async function generate(file: string, rows: number) {
  const out = createWriteStream(file);
  out.write("id,name,amount,created_at,active\n");
  const base = Date.UTC(2024, 0, 1) / 1000;
  let buf = "";
  for (let i = 1; i <= rows; i++) {
    const ts = new Date((base + i * 37) * 1000).toISOString().slice(0, 19) + "Z";
    buf += `${i},customer_${i.toString(36)}_${(i * 7919 % 100000).toString(16)},${(i * 31 % 1000000) / 100},${ts},${i % 3 === 0 ? "true" : "false"}\n`;
    if (buf.length > 1 << 20) { if (!out.write(buf)) await once(out, "drain"); buf = ""; }
  }
  out.end(buf);
  await once(out, "finish");
}

async function gql(url: string, query: string, variables: object, token?: string) {
  const r = await fetch(url + "/graphql", {
    method: "POST", headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  const body: any = await r.json();
  if (body.errors) throw new Error(JSON.stringify(body.errors));
  return body.data;
}

/** Peak RSS growth of a process over a baseline, sampled every 25 ms while `fn` runs. */
async function withRss<T>(pid: number, fn: () => Promise<T>): Promise<{ result: T; baseMb: number; peakMb: number }> {
  const rss = () => {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : 0;
  };
  const base = rss();
  let peak = base;
  const timer = setInterval(() => { peak = Math.max(peak, rss()); }, 25);
  try {
    const result = await fn();
    peak = Math.max(peak, rss());
    return { result, baseMb: base, peakMb: peak };
  } finally {
    clearInterval(timer);
  }
}

function post(port: number, path: string, file: string, token: string): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: "127.0.0.1", port, method: "POST", path,
      headers: { "content-type": "text/csv", "content-length": statSync(file).size, authorization: `Bearer ${token}` },
    }, (res) => {
      let s = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (s += d));
      res.on("end", () => { try { resolve({ status: res.statusCode!, body: JSON.parse(s) }); } catch { resolve({ status: res.statusCode!, body: s }); } });
    });
    req.on("error", reject);
    createReadStream(file, { highWaterMark: 1 << 20 }).pipe(req);
  });
}

function psqlCopy(schema: string, table: string, file: string): number {
  const t0 = performance.now();
  const r = spawnSync(PSQL, [adminUrl, "-v", "ON_ERROR_STOP=1", "-q", "-c", `\\copy "${schema}"."${table}" from '${file}' with (format csv, header true)`], { encoding: "utf8" });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`psql failed: ${r.stderr}`);
  return ms;
}

/** CPU time (user+system, ms) a process and its direct children have used so far. */
function cpuMs(pid: number): number {
  const one = (p: number) => {
    try {
      const f = readFileSync(`/proc/${p}/stat`, "utf8").split(") ")[1].split(" ");
      return (Number(f[11]) + Number(f[12])) * 10; // utime, stime in 1/100 s
    } catch { return 0; }
  };
  let total = one(pid);
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try { if (readFileSync(`/proc/${d}/stat`, "utf8").split(") ")[1].split(" ")[1] === String(pid)) total += one(Number(d)); } catch { /* gone */ }
  }
  return total;
}

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
const r1 = (x: number) => Math.round(x * 10) / 10;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

const work = join(dataDir, "import-bench");
mkdirSync(work, { recursive: true });
const serverPort = await freePort();
const pushpin = await startPushpin({
  id: "bench", dataDir, httpPort: await freePort(), publishPort: await freePort(), zmqBase: await freePortRange(4),
  origin: `127.0.0.1:${serverPort}`, sigKey: secrets.gripSigKey,
});
const dbName = new URL(adminUrl).pathname.slice(1);
const server = spawnTs("server/index.ts", {
  TDC_AUTHENTICATOR_URL: withDatabase(adminUrl, dbName, { name: ROLES.authenticator, password: secrets.authenticator }),
  TDC_SERVER_PORT: String(serverPort), TDC_PUBLISH_URLS: pushpin.publishUrl, TDC_GRIP_SIG_KEY: secrets.gripSigKey,
  TDC_SERVICE: "server", LOG_LEVEL: "warn",
});
const url = pushpin.clientUrl;
const ppPort = Number(new URL(url).port);
let exitCode = 0;
try {
  await waitForHttp(`http://127.0.0.1:${serverPort}/graphql`, 60_000, [200, 400, 405]);
  const email = "bench@example.com", password = "bench password 1";
  const user = (await gql(url, `mutation($e:String!,$p:String!){register(input:{email:$e,password:$p,handle:"bench"}){user{handle roleName}}}`, { e: email, p: password })).register.user;
  const token = (await gql(url, `mutation($e:String!,$p:String!){authenticate(input:{email:$e,password:$p}){jwtToken}}`, { e: email, p: password })).authenticate.jwtToken;
  let n = 0;
  const freshTable = async () => {
    const name = `t${++n}`;
    await gql(url, `mutation($n:String!,$c:[ColumnSpecInput]!){defineTable(input:{name:$n,columns:$c}){table{name}}}`, { n: name, c: COLUMNS }, token);
    return name;
  };
  const drop = (name: string) => gql(url, `mutation($n:String!){dropTable(input:{name:$n}){dropped}}`, { n: name }, token);

  const file = join(work, "rows.csv");
  console.log(`generating ${ROWS} rows…`);
  await generate(file, ROWS);
  const bytes = statSync(file).size;
  console.log(`file: ${(bytes / 1e6).toFixed(1)} MB`);

  const copyMs: number[] = [], httpMs: number[] = [], directMs: number[] = [], createMs: number[] = [], httpRss: number[] = [], createRss: number[] = [];
  const serverCpu: number[] = [], pushpinCpu: number[] = [];
  const loadBefore = loadavg();
  // Warm-up (page cache, catalog caches, JIT of the server's code paths).
  { const t = await freeTable(); psqlCopy(user.handle, t, file); await drop(t); const h = await freeTable(); await post(ppPort, `/tables/${h}/import`, file, token); await drop(h); }
  async function freeTable() { return freshTable(); }
  for (let rep = 0; rep < REPS; rep++) {
    const a = await freshTable();
    copyMs.push(psqlCopy(user.handle, a, file));
    await drop(a);
    const b = await freshTable();
    const [sc, pc] = [cpuMs(server.pid!), cpuMs(pushpin.child.pid!)];
    const t0 = performance.now();
    const h = await withRss(server.pid!, () => post(ppPort, `/tables/${b}/import`, file, token));
    httpMs.push(performance.now() - t0);
    serverCpu.push(cpuMs(server.pid!) - sc);
    pushpinCpu.push(cpuMs(pushpin.child.pid!) - pc);
    if (h.result.status !== 200 || h.result.body.rows !== ROWS) throw new Error(`import failed: ${JSON.stringify(h.result.body)}`);
    if (h.result.body.path !== "fast") throw new Error(`expected the fast path: ${JSON.stringify(h.result.body)}`);
    httpRss.push(h.peakMb - h.baseMb);
    await drop(b);
    // The same POST straight to the origin (no Pushpin), to tell our cost from the proxy's.
    const d = await freshTable();
    const t2 = performance.now();
    const dr = await post(serverPort, `/tables/${d}/import`, file, token);
    directMs.push(performance.now() - t2);
    if (dr.status !== 200) throw new Error(`direct import failed: ${JSON.stringify(dr.body)}`);
    await drop(d);
    const c = `c${rep}`;
    const t1 = performance.now();
    const cr = await withRss(server.pid!, () => post(ppPort, `/tables/${c}/import?create=true`, file, token));
    createMs.push(performance.now() - t1);
    if (cr.result.status !== 200 || cr.result.body.rows !== ROWS) throw new Error(`create import failed: ${JSON.stringify(cr.result.body)}`);
    createRss.push(cr.peakMb - cr.baseMb);
    await drop(c);
    console.log(`rep ${rep + 1}: \\copy ${r1(copyMs.at(-1)!)} ms, POST ${r1(httpMs.at(-1)!)} ms (RSS +${r1(httpRss.at(-1)!)} MB), direct ${r1(directMs.at(-1)!)} ms, create ${r1(createMs.at(-1)!)} ms (RSS +${r1(createRss.at(-1)!)} MB)`);
  }
  // The safe path (a table with a user trigger: staged COPY, then insert inside a definer function),
  // against \copy into an identical table with the same trigger.
  const withTrigger = async () => {
    const t = await freshTable();
    const sql = `set role "${user.roleName}"; create or replace function "${user.handle}".tg_bench() returns trigger language plpgsql as $$ begin return new; end $$; ` +
      `create trigger _100_bench before insert on "${user.handle}"."${t}" for each row execute function "${user.handle}".tg_bench();`;
    const r = spawnSync(PSQL, [adminUrl, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`psql failed: ${r.stderr}`);
    return t;
  };
  const safeCopyMs: number[] = [], safeMs: number[] = [];
  for (let rep = 0; rep < SAFE_REPS; rep++) {
    const a = await withTrigger();
    safeCopyMs.push(psqlCopy(user.handle, a, file));
    await drop(a);
    const b = await withTrigger();
    const t0 = performance.now();
    const sr = await post(ppPort, `/tables/${b}/import`, file, token);
    safeMs.push(performance.now() - t0);
    if (sr.status !== 200 || sr.body.rows !== ROWS || sr.body.path !== "safe") throw new Error(`safe import failed: ${JSON.stringify(sr.body)}`);
    await drop(b);
    console.log(`safe rep ${rep + 1}: \copy (trigger) ${r1(safeCopyMs.at(-1)!)} ms, POST (safe path) ${r1(safeMs.at(-1)!)} ms`);
  }
  rmSync(file);

  let big: any = null;
  if (BIG_ROWS > 0) {
    const bigFile = join(work, "big.csv");
    console.log(`generating ${BIG_ROWS} rows…`);
    await generate(bigFile, BIG_ROWS);
    const bigBytes = statSync(bigFile).size;
    console.log(`big file: ${(bigBytes / 1e6).toFixed(1)} MB`);
    const a = await freshTable();
    const bigCopy = psqlCopy(user.handle, a, bigFile);
    await drop(a);
    const b = await freshTable();
    const t0 = performance.now();
    const h = await withRss(server.pid!, () => post(ppPort, `/tables/${b}/import`, bigFile, token));
    const bigHttp = performance.now() - t0;
    if (h.result.status !== 200 || h.result.body.rows !== BIG_ROWS) throw new Error(`big import failed: ${JSON.stringify(h.result.body)}`);
    await drop(b);
    rmSync(bigFile);
    big = {
      rows: BIG_ROWS, mb: r1(bigBytes / 1e6), copy_ms: r1(bigCopy), http_ms: r1(bigHttp), ratio: r3(bigHttp / bigCopy),
      rss_growth_mb: r1(h.peakMb - h.baseMb), rss_base_mb: r1(h.baseMb),
    };
    console.log(`big: \\copy ${big.copy_ms} ms, POST ${big.http_ms} ms, RSS +${big.rss_growth_mb} MB`);
  }

  const mb = bytes / 1e6;
  const c = median(copyMs), h = median(httpMs), cr = median(createMs), dm = median(directMs);
  const result = {
    when: new Date().toISOString(),
    machine: { cpus: (await import("node:os")).cpus().length, node: process.version,
      loadavg_1m_before: r1(loadBefore[0]), loadavg_1m_after_reps: r1(loadavg()[0]) },
    file: { rows: ROWS, mb: r1(mb), columns: COLUMNS },
    reps: REPS,
    copy: { median_ms: r1(c), runs_ms: copyMs.map(r1), rows_per_s: Math.round(ROWS / (c / 1000)), mb_per_s: r1(mb / (c / 1000)) },
    http_import: { median_ms: r1(h), runs_ms: httpMs.map(r1), rows_per_s: Math.round(ROWS / (h / 1000)), mb_per_s: r1(mb / (h / 1000)),
      ratio_vs_copy: r3(h / c), target: 1.25, rss_growth_mb_max: r1(Math.max(...httpRss)),
      cpu_ms_median: { server: median(serverCpu), pushpin: median(pushpinCpu) } },
    safe_path: { copy_with_trigger_median_ms: r1(median(safeCopyMs)), copy_with_trigger_runs_ms: safeCopyMs.map(r1),
      http_median_ms: r1(median(safeMs)), http_runs_ms: safeMs.map(r1), ratio_vs_copy_with_trigger: r3(median(safeMs) / median(safeCopyMs)) },
    direct_import_no_pushpin: { median_ms: r1(dm), runs_ms: directMs.map(r1), ratio_vs_copy: r3(dm / c) },
    create_import: { median_ms: r1(cr), runs_ms: createMs.map(r1), rows_per_s: Math.round(ROWS / (cr / 1000)), mb_per_s: r1(mb / (cr / 1000)),
      ratio_vs_copy: r3(cr / c), target: 2.5, rss_growth_mb_max: r1(Math.max(...createRss)) },
    big_file: big,
    rss_target_mb: 64,
  };
  const pass = {
    http: result.http_import.ratio_vs_copy <= 1.25,
    create: result.create_import.ratio_vs_copy <= 2.5,
    rss: result.http_import.rss_growth_mb_max < 64 && result.create_import.rss_growth_mb_max < 64 && (!big || big.rss_growth_mb < 64),
  };
  writeFileSync(join(ROOT, "bench/results/import.json"), JSON.stringify({ ...result, pass }, null, 2) + "\n");
  const md = [
    "# Import benchmark",
    "",
    `Run ${result.when} with \`npm run bench:import\` (${result.machine.cpus} CPUs shared with other work: 1-minute load average ${result.machine.loadavg_1m_before} before, ${result.machine.loadavg_1m_after_reps} after the runs; Node ${result.machine.node}).`,
    `File: ${ROWS.toLocaleString("en")} rows, ${r1(mb)} MB, 5 typed columns (bigint, text, numeric(12,2), timestamptz, boolean), into fresh identical tables; median of ${REPS} alternating runs after a warm-up.`,
    "",
    "| path | median | rows/s | MB/s | vs \\copy | target | server RSS growth (max) |",
    "|---|---|---|---|---|---|---|",
    `| psql \\copy (baseline) | ${r1(c)} ms | ${result.copy.rows_per_s.toLocaleString("en")} | ${result.copy.mb_per_s} | 1.00× | | |`,
    `| POST /tables/:name/import via Pushpin | ${r1(h)} ms | ${result.http_import.rows_per_s.toLocaleString("en")} | ${result.http_import.mb_per_s} | ${result.http_import.ratio_vs_copy.toFixed(2)}× | ≤ 1.25× ${pass.http ? "✅" : "❌"} | ${result.http_import.rss_growth_mb_max} MB |`,
    `| (for attribution) the same POST straight to the server, no Pushpin | ${r1(dm)} ms | ${Math.round(ROWS / (dm / 1000)).toLocaleString("en")} | ${r1(mb / (dm / 1000))} | ${(dm / c).toFixed(2)}× | | |`,
    `| POST …?create=true via Pushpin | ${r1(cr)} ms | ${result.create_import.rows_per_s.toLocaleString("en")} | ${result.create_import.mb_per_s} | ${result.create_import.ratio_vs_copy.toFixed(2)}× | ≤ 2.5× ${pass.create ? "✅" : "❌"} | ${result.create_import.rss_growth_mb_max} MB |`,
    `| POST into a table with a user trigger (safe path: staged COPY + insert in a definer function) via Pushpin | ${result.safe_path.http_median_ms} ms | ${Math.round(ROWS / (result.safe_path.http_median_ms / 1000)).toLocaleString("en")} | ${r1(mb / (result.safe_path.http_median_ms / 1000))} | ${(result.safe_path.http_median_ms / c).toFixed(2)}× (${result.safe_path.ratio_vs_copy_with_trigger.toFixed(2)}× \\copy into the same triggered table, ${result.safe_path.copy_with_trigger_median_ms} ms; median of ${SAFE_REPS}) | | |`,
    "",
    big ? `Large file: ${big.rows.toLocaleString("en")} rows / ${big.mb} MB: \\copy ${big.copy_ms} ms, POST ${big.http_ms} ms (${big.ratio.toFixed(2)}×); server RSS growth ${big.rss_growth_mb} MB (base ${big.rss_base_mb} MB) vs ${result.http_import.rss_growth_mb_max} MB for the ${r1(mb)} MB file — target < 64 MB and flat ${pass.rss ? "✅" : "❌"}.` : "Large file: skipped (BENCH_BIG_ROWS=0).",
    "",
    `CPU per POST via Pushpin (median): server ${median(serverCpu)} ms, Pushpin (condure, proxy, zurl, handler) ${median(pushpinCpu)} ms — on 2 cores shared with Postgres's COPY backend, which is why the Pushpin path loses ground when the machine is busy.`,
    "",
    `Runs (ms): \\copy ${copyMs.map(r1).join(", ")}; POST ${httpMs.map(r1).join(", ")}; direct ${directMs.map(r1).join(", ")}; create ${createMs.map(r1).join(", ")}.`,
    "",
  ].join("\n");
  writeFileSync(join(ROOT, "bench/results/import.md"), md);
  console.log(md);
} catch (e) {
  console.error((e as Error).stack);
  exitCode = 1;
} finally {
  await stopChild(server);
  await pushpin.stop();
  rmSync(work, { recursive: true, force: true });
}
process.exit(exitCode);
