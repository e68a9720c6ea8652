/**
 * `npm run bench:realtime` — the realtime pipeline under load, on a fresh
 * bootstrapped cluster (server/devstack/bench.ts prepares it).
 *
 *  1. Latency: 100 SSE subscribers through Pushpin, 1,000 events/s (one event
 *     per committed transaction) for 30 s: send of the committing statement →
 *     receipt by each subscriber (an upper bound on commit → receipt);
 *     loss, duplicates and order checked per subscriber.
 *  2. Fan-out: as many subscribers as the machine takes (target 10,000) on one
 *     channel, 10 events/s for 30 s; p99 delivery, loss; memory (RSS) of
 *     Pushpin (all its processes), the server and the worker.
 *  3. Throughput ratio: the same subscribers, events as fast as possible,
 *     through our pipeline (database → forwarder → Pushpin) vs published
 *     straight to Pushpin by the benchmark itself.
 *
 * Env knobs: BENCH_PER_TX ("10,1": events per transaction in the latency runs, in that order), BENCH_SECONDS (30), BENCH_RATE (1000), BENCH_SUBS (100),
 * BENCH_FANOUT (subscriber counts tried in turn, "1000,3000,10000"; it stops
 * escalating after a step misses p99 ≤ 1 s or loses events), BENCH_FANOUT_RATE (10), BENCH_FANOUT_PUSHPINS (1: Pushpin instances the fan-out subscribers are spread over; the worker publishes to all), BENCH_FANOUT_DIRECT=1 (after each fan-out step, the same step with the benchmark publishing straight to Pushpin: Pushpin's own figure on this machine),
 * BENCH_BURST (20000), BENCH_PHASES ("latency,throughput,fanout"; also "storm": BENCH_STORM_CLIENTS (1000) connecting at once, no retries; "idle": BENCH_IDLE_SUBS (10000) subscribers on a channel quiet for BENCH_IDLE_SECONDS (75), then 1 event/s for 30 s), BENCH_FANOUT_ALL=1 (try every
 * step), BENCH_OUT (results file name, "realtime"), BENCH_COLD=1 (latency phase: all subscribers join
 * the fresh channel at once instead of one first and the rest 1.5 s later).
 */
import net from "node:net";
import { execFileSync } from "node:child_process";
import { readFileSync, readdirSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { Worker } from "node:worker_threads";
import pg from "pg";
import { ROOT } from "../server/config.ts";
import { withDatabase } from "../server/devstack/database.ts";
import { startPushpin } from "../server/devstack/pushpin.ts";
import { spawnTs, stopChild, waitForHttp } from "../server/devstack/processes.ts";
import { ROLES } from "../server/roles.ts";
import { sseEvent } from "../server/grip.ts";

const env = (k: string, d: number) => Number(process.env[k] || d);
const SECONDS = env("BENCH_SECONDS", 30);
const RATE = env("BENCH_RATE", 1000);
const SUBS = env("BENCH_SUBS", 100);
const FANOUT_STEPS = String(process.env.BENCH_FANOUT || "1000,3000,10000").split(",").map(Number);
const FANOUT_RATE = env("BENCH_FANOUT_RATE", 10);
const FANOUT_PUSHPINS = env("BENCH_FANOUT_PUSHPINS", 1);
const BURST = env("BENCH_BURST", 20000);
const OUT = process.env.BENCH_OUT || "realtime";   // results file name under bench/results
const PER_TX = String(process.env.BENCH_PER_TX || "10,1").split(",").map(Number);
const PRODUCER_CONNS = env("BENCH_PRODUCER_CONNS", 3);
const PHASES = String(process.env.BENCH_PHASES || "latency,throughput,fanout").split(",");

const adminUrl = process.env.TDC_BENCH_ADMIN_URL!;
const dbName = process.env.TDC_BENCH_DB!;
const secrets = JSON.parse(readFileSync(process.env.TDC_BENCH_SECRETS!, "utf8"));
const dataDir = process.env.TDC_BENCH_DATA_DIR!;
const ownerUrl = withDatabase(adminUrl, dbName, { name: ROLES.owner, password: secrets.owner });
const authUrl = withDatabase(adminUrl, dbName, { name: ROLES.authenticator, password: secrets.authenticator });

// File descriptors: 10k client sockets here, 10k in Pushpin's condure. Raise what we can.
let nofile = "";
try {
  execFileSync("prlimit", ["--pid", String(process.pid), "--nofile=65536:65536"]);
} catch { /* keep the current limit */ }
try { nofile = execFileSync("prlimit", ["--pid", String(process.pid), "--nofile", "--output=SOFT,HARD", "--noheadings"]).toString().trim(); } catch {}

const log = (msg: string, extra: Record<string, unknown> = {}) => console.log(JSON.stringify({ t: new Date().toISOString(), msg, ...extra }));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (a: Float64Array | number[], p: number) => {
  const s = Float64Array.from(a).sort();
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : NaN;
};
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

function rssKb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : 0;
  } catch { return 0; }
}
/** A process and all its descendants (Pushpin runs condure, zurl, proxy, handler). */
function tree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(d)]);
    } catch {}
  }
  const out: number[] = [];
  const stack = [root];
  while (stack.length) {
    const p = stack.pop()!;
    out.push(p);
    stack.push(...(children.get(p) ?? []));
  }
  return out;
}
const treeRssMb = (root: number) => round(tree(root).reduce((a, p) => a + rssKb(p), 0) / 1024, 1);
/** CPU seconds (user + system) used so far by a process and its descendants (clock ticks of 1/100 s). */
function treeCpuS(root: number): number {
  let ticks = 0;
  for (const p of tree(root)) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      ticks += Number(f[11]) + Number(f[12]);
    } catch {}
  }
  return ticks / 100;
}

// ---- subscribers ----------------------------------------------------------------------------
/**
 * A subscriber. Like EventSource, one whose stream ends unasked reconnects after 1 s with its last id
 * (`reconnects` counts those; Pushpin 1.36 now and then cancels a stream while thousands connect,
 * "zhttp server: … received message out of sequence, canceling" in its log). `closed`: ended by us.
 */
interface Sub { last: number; count: number; dupes: number; disorder: number; open: boolean; req: net.Socket; reconnects: number; closed: boolean }
const closeSub = (s: Sub) => { s.closed = true; s.req.destroy(); };
/** Times on this thread's clock, in arrays the producer thread writes too. */
const shared = (n: number) => new Float64Array(new SharedArrayBuffer(8 * n));
let sendTimes: Float64Array = shared(0);   // by k (payload key)
let ackTimes: Float64Array = shared(0);    // by k: when the commit was acknowledged
let commitMs: number[] = [];
let latencies: Float64Array = new Float64Array(0);
let latN = 0;
let latAck: Float64Array = new Float64Array(0);   // commit acknowledged → receipt (0 if it arrived first)
let recording = false;

const SEP = Buffer.from("\n\n");
const ID = Buffer.from("id: ");
const K_KEY = Buffer.from('"k":');   // events carry {"k": n} (compact JSON)

/**
 * One SSE subscriber on a raw TCP socket: a plain HTTP/1.1 GET, then the response bytes are
 * scanned for `id: N … "k":K … \n\n` blocks (chunk framing between items is skipped over).
 * No HTTP parser, no string building: with 10,000 subscribers this process shares the 2 cores
 * with Pushpin, and its own per-read cost would show up as delivery latency.
 */
function subscribe(base: string, channel: string, token: string, after?: number, again?: Sub): Promise<Sub> {
  const u = new URL(base);
  const path = `/channels/${channel}/events?access_token=${encodeURIComponent(token)}${after !== undefined ? `&lastEventId=${after}` : ""}`;
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(u.port), u.hostname);
    const sub: Sub = again ?? { last: after ?? 0, count: 0, dupes: 0, disorder: 0, open: false, req: sock, reconnects: 0, closed: false };
    sub.req = sock;
    let headerDone = false;
    let carry: Buffer | null = null;   // event bytes carried over
    sock.setNoDelay(true);
    sock.on("connect", () => sock.write(`GET ${path} HTTP/1.1\r\nHost: ${u.host}\r\nAccept: text/event-stream\r\n\r\n`));
    // Chunked transfer decoding (Pushpin may split an item over several chunks), then the events.
    let chunked = false;
    let raw: Buffer | null = null;     // undecoded bytes carried over
    let left = -1;                     // bytes left in the current chunk; -1 = at a size line; -2 = at its CRLF
    const decode = (buf: Buffer): Buffer[] => {
      const out: Buffer[] = [];
      let p = 0;
      while (p < buf.length) {
        if (left === -1) {
          const nl = buf.indexOf("\r\n", p);
          if (nl < 0) break;
          left = parseInt(buf.subarray(p, nl).toString("latin1"), 16);
          p = nl + 2;
          if (left === 0) { left = -3; break; }  // last chunk: the stream ended
        } else if (left === -2) {
          if (buf.length - p < 2) break;
          p += 2;
          left = -1;
        } else if (left > 0) {
          const n = Math.min(left, buf.length - p);
          out.push(buf.subarray(p, p + n));
          p += n;
          left -= n;
          if (left === 0) left = -2;
        } else break;
      }
      raw = p < buf.length && left !== -3 ? Buffer.from(buf.subarray(p)) : null;
      return out;
    };
    const onBody = (body: Buffer) => {
      const buf = carry ? Buffer.concat([carry, body]) : body;
      let pos = 0;
      for (;;) {
        const at = buf.indexOf(ID, pos);
        if (at < 0) { pos = Math.max(pos, buf.length - ID.length); break; }  // keep a split "id: "
        const end = buf.indexOf(SEP, at);
        if (end < 0) { pos = at; break; }
        const now = performance.now();
        let id = 0;
        for (let i = at + ID.length; i < end && buf[i] >= 0x30 && buf[i] <= 0x39; i++) id = id * 10 + buf[i] - 0x30;
        if (id <= sub.last) sub.dupes++;
        else if (id !== sub.last + 1) {
          sub.disorder++;
          if (process.env.BENCH_DEBUG) log("jump", { from: sub.last, to: id });
        }
        if (id > sub.last) { sub.last = id; sub.count++; }
        if (recording) {
          const kAt = buf.indexOf(K_KEY, at);
          if (kAt >= 0 && kAt < end) {
            let k = 0;
            for (let i = kAt + K_KEY.length; i < end && buf[i] >= 0x30 && buf[i] <= 0x39; i++) k = k * 10 + buf[i] - 0x30;
            const sent = sendTimes[k];
            if (sent > 0 && latN < latencies.length) {
              const ack = ackTimes[k];
              latAck[latN] = ack > 0 ? Math.max(0, now - ack) : 0;
              latencies[latN++] = now - sent;
            }
          }
        }
        pos = end + 2;
      }
      carry = pos < buf.length ? Buffer.from(buf.subarray(pos)) : null;
    };
    sock.on("data", (chunk: Buffer) => {
      let buf = raw ? Buffer.concat([raw, chunk]) : chunk;
      raw = null;
      if (!headerDone) {
        const h = buf.indexOf("\r\n\r\n");
        if (h < 0) { raw = Buffer.from(buf); return; }
        const head = buf.subarray(0, h).toString("latin1");
        const status = Number(head.slice(9, 12));
        if (status !== 200) { reject(new Error(`subscribe: HTTP ${status}`)); sock.destroy(); return; }
        chunked = /\r\ntransfer-encoding:\s*chunked/i.test(head);
        headerDone = true;
        sub.open = true;
        resolve(sub);
        buf = buf.subarray(h + 4);
      }
      if (!chunked) onBody(buf);
      else for (const piece of decode(buf)) onBody(piece);
    });
    sock.on("close", () => {
      sub.open = false;
      if (!headerDone) return reject(new Error("subscribe: connection closed"));
      if (sub.closed || sub.req !== sock) return;
      const retry = (attempt: number) => setTimeout(() => {
        if (sub.closed) return;
        subscribe(base, channel, token, sub.last, sub).then(() => { sub.reconnects++; },
          () => { if (attempt < 10) retry(attempt + 1); });
      }, 1000);
      retry(1);
    });
    sock.on("error", (e) => { sub.open = false; if (!headerDone) reject(e); });
  });
}

async function subscribeMany(n: number, base: string | string[], channel: string, token: string, concurrency = 100, after?: number): Promise<Sub[]> {
  const subs: Sub[] = [];
  let next = 0;
  let failures = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < n && failures < 50) {
      const at = Array.isArray(base) ? base[next % base.length] : base;  // spread over Pushpin instances
      next++;
      for (let attempt = 1; ; attempt++) {
        try { subs.push(await subscribe(at, channel, token, after)); break; } catch (e) {
          if (attempt < 4) { await sleep(250 * attempt); continue; }
          failures++;
          if (failures === 1) log("subscribe failed", { err: (e as Error).message });
          break;
        }
      }
    }
  }));
  return subs;
}

// ---- main ----------------------------------------------------------------------------------
const results: Record<string, any> = { date: new Date().toISOString(), machine: { cpus: (await import("node:os")).cpus().length, nofile } };
const gripSigKey = secrets.gripSigKey as string;
// Below the ephemeral range (32768+): after a fan-out run, thousands of client sockets sit in
// TIME_WAIT on ephemeral ports, and Pushpin's ZeroMQ binds there failed ("unable to bind").
const serverPort = 21100 + Math.floor(Math.random() * 1000);
const pushpin = await startPushpin({
  id: "bench", dataDir, httpPort: serverPort + 1, publishPort: serverPort + 2, zmqBase: serverPort + 10,
  origin: `127.0.0.1:${serverPort}`, sigKey: gripSigKey,
});
const childEnv = {
  TDC_AUTHENTICATOR_URL: authUrl, TDC_OWNER_URL: ownerUrl, TDC_PUBLISH_URLS: pushpin.publishUrl,
  TDC_GRIP_SIG_KEY: gripSigKey, TDC_SERVER_PORT: String(serverPort), LOG_LEVEL: process.env.BENCH_CHILD_LOG_LEVEL || "warn",
};
const server = spawnTs("server/index.ts", { ...childEnv, TDC_SERVICE: "server" });
let worker = spawnTs("worker/index.ts", { ...childEnv, TDC_SERVICE: "worker" });
const pushpins = [pushpin];
const admin = new pg.Pool({ connectionString: adminUrl, max: 4 });
const base = pushpin.clientUrl;
let exitCode = 0;

/** Event k as the benchmark publishes it straight to Pushpin: one item, formatted as the forwarder formats events. */
const directItem = (channel: string, k: number) => ({
  channel, id: String(k), "prev-id": String(k - 1),
  formats: { "http-stream": { content: sseEvent(k, "job.run_succeeded", `{"k":${k}}`) } },
});

/** Job sources must name a job of the user: placeholder view + job rows (never scheduled). */
async function ensureJob(userId: string, job: string) {
  await admin.query(
    `with v as (insert into app_public.views (user_id, name, query) values ($1, 'fixture_' || $2, 'select 1')
                on conflict (user_id, name) do update set updated_at = now() returning id)
     insert into app_public.jobs (user_id, view_id, name, schedule, active)
     select $1, v.id, $2, '0 0 1 1 *', false from v
     where not exists (select 1 from app_public.jobs j where j.user_id = $1 and j.name = $2)`, [userId, job]);
}

/** A channel named like the job fixture that feeds it. */
async function jobChannel(userId: string, name: string, token: string) {
  await ensureJob(userId, name);
  await gql(`mutation($n:String!,$j:String!){createChannel(input:{name:$n, sources:[{kind:"job", name:$j}]}){channel{id}}}`, { n: name, j: name }, token);
}

async function gql(query: string, variables: any = {}, token?: string) {
  const r = await fetch(base + "/graphql", { method: "POST", headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) }, body: JSON.stringify({ query, variables }) });
  const j: any = await r.json();
  if (j.errors) throw new Error(JSON.stringify(j.errors));
  return j.data;
}

/** Emit events at `rate`/s for `seconds` (perTx per transaction; keys from k0) from bench/producer.ts's thread. */
async function produce(userId: string, job: string, rate: number, seconds: number, k0: number, perTx = 1): Promise<number> {
  const w = new Worker(new URL("./producer.ts", import.meta.url), {
    workerData: { adminUrl, conns: PRODUCER_CONNS, userId, job, rate, seconds, k0, perTx,
      sendBuf: sendTimes.buffer, ackBuf: ackTimes.buffer, origin: performance.timeOrigin },
  });
  const done: { total: number; commitMs: number[] } = await new Promise((resolve, reject) => {
    w.once("message", resolve);
    w.once("error", reject);
    w.once("exit", (code) => reject(new Error(`producer thread exited with ${code}`)));
  });
  commitMs.push(...done.commitMs);
  return done.total;
}

try {
  await waitForHttp(`${base}/healthz`, 60_000, [200, 503]);
  await waitForHttp(`http://127.0.0.1:${serverPort}/healthz`, 60_000, [200, 503]);
  const email = `bench${Date.now()}@example.com`;
  const password = "correct horse battery";
  const user = (await gql(`mutation($e:String!,$p:String!){register(input:{email:$e,password:$p,handle:"bench"}){user{id}}}`, { e: email, p: password })).register.user;
  const token = (await gql(`mutation($e:String!,$p:String!){authenticate(input:{email:$e,password:$p}){jwtToken}}`, { e: email, p: password })).authenticate.jwtToken;
  for (const name of ["burst", "direct"]) {
    await jobChannel(user.id, name, token);
  }
  const chanIds = Object.fromEntries((await admin.query("select name, id from app_public.channels")).rows.map((r) => [r.name, r.id]));

  // ---- 1. latency (one event per transaction, then transactions of 10 events) ----
  if (PHASES.includes("latency")) results.latency = [];
  for (const perTx of PHASES.includes("latency") ? PER_TX : []) {
    const chan = `lat${perTx}`;
    await jobChannel(user.id, chan, token);
    const total = RATE * SECONDS;
    sendTimes = shared(total + 10);
    ackTimes = shared(total + 10);
    commitMs = [];
    latencies = new Float64Array(total * SUBS);
    latAck = new Float64Array(total * SUBS);
    latN = 0;
    // One subscriber first, the rest 1.5 s later: Pushpin (1.36) makes every stream that joins a
    // channel within ~1 s of its first subscription fetch its Grip-Link once, and its handler runs
    // those fetches at 10/s (hard-coded), so 100 streams joining a cold channel together sit ~10 s
    // in repairs. That cold start is measured apart (BENCH_COLD=1 connects all at once).
    const subs = process.env.BENCH_COLD ? [] : await subscribeMany(1, base, chan, token, 1);
    if (!process.env.BENCH_COLD) await sleep(1500);
    subs.push(...await subscribeMany(SUBS - subs.length, base, chan, token, 20));
    if (!process.env.BENCH_COLD) await sleep(1500);
    log("latency: subscribers connected", { n: subs.length, perTx, cold: !!process.env.BENCH_COLD });
    recording = true;
    const t0 = performance.now();
    // Forwarder lag (events committed but not yet accepted by Pushpin), sampled every second.
    const lagSamples: number[] = [];
    const lagTimer = setInterval(async () => {
      const { rows } = await admin.query(`select h.last_seq - coalesce(f.seq, 0) as lag from app_private.channel_heads h
        join app_public.channels c on c.id = h.channel_id left join app_private.forwarder_cursors f on f.channel_id = h.channel_id where c.name = $1`, [chan]);
      lagSamples.push(Number(rows[0]?.lag ?? 0));
    }, 1000);
    await produce(user.id, chan, RATE, SECONDS, 1, perTx);
    clearInterval(lagTimer);
    const produceS = (performance.now() - t0) / 1000;
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && subs.some((s) => s.count < total)) await sleep(100);
    recording = false;
    const lat = latencies.subarray(0, latN);
    const la = latAck.subarray(0, latN);
    const r = {
      events_per_transaction: perTx, subscribers: subs.length, events: total, target_rate: RATE, achieved_produce_rate: round(total / produceS, 0),
      deliveries: subs.reduce((a, s) => a + s.count, 0), expected_deliveries: total * subs.length,
      lost: subs.reduce((a, s) => a + (total - s.count), 0), duplicates: subs.reduce((a, s) => a + s.dupes, 0),
      out_of_order: subs.reduce((a, s) => a + s.disorder, 0),
      latency_ms: { p50: round(pct(lat, 50)), p90: round(pct(lat, 90)), p99: round(pct(lat, 99)), p999: round(pct(lat, 99.9)), max: round(pct(lat, 100)) },
      commit_ack_to_receipt_ms: { p50: round(pct(la, 50)), p90: round(pct(la, 90)), p99: round(pct(la, 99)), max: round(pct(la, 100)) },
      statement_send_to_commit_ack_ms: { p50: round(pct(commitMs, 50)), p99: round(pct(commitMs, 99)) },
      forwarder_lag_events: { median: pct(lagSamples, 50), max: pct(lagSamples, 100) },
    };
    results.latency.push(r);
    log("latency done", r);
    for (const s of subs) closeSub(s);
    await sleep(1000);
  }

  // ---- 2. throughput: our pipeline vs straight to Pushpin, same subscribers ----
  if (PHASES.includes("throughput")) {
    const waitAll = async (subs: Sub[], n: number) => {
      const deadline = Date.now() + 90_000;
      while (Date.now() < deadline && subs.some((s) => s.count < n)) await sleep(20);
      return subs.every((s) => s.count >= n);
    };
    // Pipeline: commits of 100 events each, as fast as one connection can go.
    let subs = await subscribeMany(SUBS, base, "burst", token, 20);
    let t0 = performance.now();
    for (let i = 0; i < BURST; i += 100) {
      await admin.query("select app_hidden.emit_event($1, 'job', 'burst', 'job.run_succeeded', jsonb_build_object('k', g)) from generate_series($2::int, $3::int) g", [user.id, i + 1, i + 100]);
    }
    const pipeOk = await waitAll(subs, BURST);
    const pipeS = (performance.now() - t0) / 1000;
    const pipe = { ok: pipeOk, events_per_s: round(BURST / pipeS, 0), lost: subs.reduce((a, s) => a + (BURST - s.count), 0), duplicates: subs.reduce((a, s) => a + s.dupes, 0) };
    for (const s of subs) closeSub(s);
    // Direct: the benchmark publishes the same items to Pushpin itself (100 per request, one
    // event per item), as fast as Pushpin takes them. The events are also written to the log with
    // the forwarder's cursor moved past them first, so the forwarder stays out of it while
    // Pushpin can still repair its drops from the origin, as in the pipeline run.
    subs = await subscribeMany(SUBS, base, "direct", token, 20);
    await admin.query("insert into app_private.forwarder_cursors (channel_id, seq) values ($1, $2) on conflict (channel_id) do update set seq = excluded.seq", [chanIds.direct, BURST]);
    for (let i = 0; i < BURST; i += 1000) {
      await admin.query("select app_hidden.emit_event($1, 'job', 'direct', 'job.run_succeeded', jsonb_build_object('k', g)) from generate_series($2::int, $3::int) g", [user.id, i + 1, Math.min(BURST, i + 1000)]);
    }
    const chan = `tdc-${dbName}-${chanIds.direct}`;
    t0 = performance.now();
    for (let i = 0; i < BURST; i += 100) {
      const items = [];
      for (let k = i + 1; k <= Math.min(BURST, i + 100); k++) {
        items.push(directItem(chan, k));
      }
      const r = await fetch(pushpin.publishUrl, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ items }) });
      await r.text();
    }
    const directOk = await waitAll(subs, BURST);
    const directS = (performance.now() - t0) / 1000;
    const direct = { ok: directOk, events_per_s: round(BURST / directS, 0), lost: subs.reduce((a, s) => a + (BURST - s.count), 0), duplicates: subs.reduce((a, s) => a + s.dupes, 0) };
    for (const s of subs) closeSub(s);
    results.throughput = { events: BURST, subscribers: SUBS, pipeline: pipe, direct_to_pushpin: direct, ratio: round(pipe.events_per_s / direct.events_per_s, 2) };
    log("throughput done", results.throughput);
  }
  // ---- reconnect storm: N clients connecting in the same instant, no retries (BENCH_PHASES=storm) ----
  if (PHASES.includes("storm")) {
    const n = env("BENCH_STORM_CLIENTS", 1000);
    await jobChannel(user.id, "storm", token);
    const t0 = performance.now();
    const outcomes = await Promise.allSettled(Array.from({ length: n }, () => subscribe(base, "storm", token)));
    const ms = performance.now() - t0;
    const failures: Record<string, number> = {};
    for (const o of outcomes) if (o.status === "rejected") failures[o.reason.message] = (failures[o.reason.message] ?? 0) + 1;
    const ok = outcomes.filter((o) => o.status === "fulfilled").map((o) => (o as PromiseFulfilledResult<Sub>).value);
    results.storm = { clients: n, connected: ok.length, failures, ms: round(ms, 0) };
    log("storm done", results.storm);
    for (const s of ok) closeSub(s);
    await sleep(2000);
  }
  // ---- idle channel (BENCH_PHASES=idle): BENCH_IDLE_SUBS (10000) subscribers connect, the channel stays
  // quiet for BENCH_IDLE_SECONDS (75: past the streams' idle re-check), then 1 event/s for 30 s ----
  if (PHASES.includes("idle")) {
    const n = env("BENCH_IDLE_SUBS", 10000);
    await jobChannel(user.id, "idle", token);
    const subs = await subscribeMany(n, base, "idle", token, 200);
    log("idle: subscribers connected", { n: subs.length });
    await sleep(env("BENCH_IDLE_SECONDS", 75) * 1000);
    const total = 30;
    sendTimes = shared(total + 10);
    ackTimes = shared(total + 10);
    latencies = new Float64Array(total * n);
    latN = 0;
    recording = true;
    await produce(user.id, "idle", 1, total, 1);
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && subs.some((s) => s.count < total)) await sleep(200);
    recording = false;
    const lat = latencies.subarray(0, latN);
    results.idle = { subscribers: subs.length, events: total, deliveries: subs.reduce((a, s) => a + s.count, 0),
      latency_ms: { p50: round(pct(lat, 50)), p90: round(pct(lat, 90)), p99: round(pct(lat, 99)), max: round(pct(lat, 100)) } };
    log("idle done", results.idle);
    for (const s of subs) closeSub(s);
    await sleep(2000);
  }
  // ---- 3. fan-out, escalating ----
  await sleep(5000); // let Pushpin finish with the streams of the previous phase
  if (PHASES.includes("fanout")) results.fanout = [];
  if (PHASES.includes("fanout") && FANOUT_PUSHPINS > 1) {
    // Scale-out as deployed: several Pushpin instances, the worker publishing to all of them,
    // subscribers spread over them. (Pushpin's handler is one thread: one instance caps out at
    // roughly 100,000 deliveries/s here, which is 10,000 streams × 10 events/s.)
    for (let i = 2; i <= FANOUT_PUSHPINS; i++) {
      const port = serverPort + 100 * i;
      pushpins.push(await startPushpin({ id: `bench${i}`, dataDir, httpPort: port + 1, publishPort: port + 2, zmqBase: port + 10,
        origin: `127.0.0.1:${serverPort}`, sigKey: gripSigKey }));
    }
    await stopChild(worker);
    worker = spawnTs("worker/index.ts", { ...childEnv, TDC_SERVICE: "worker", TDC_PUBLISH_URLS: pushpins.map((p) => p.publishUrl).join(",") });
    for (const p of pushpins) await waitForHttp(`${p.clientUrl}/healthz`, 60_000, [200, 503]);
    await sleep(2000);
  }
  const fanBases = pushpins.map((p) => p.clientUrl);
  const pushpinMb = () => round(pushpins.reduce((a, p) => a + treeRssMb(p.child.pid!), 0), 1);
  /**
   * One fan-out run: FANOUT subscribers on a fresh channel, FANOUT_RATE events/s for SECONDS.
   * "pipeline": committed events (database → forwarder → Pushpin). "direct": the benchmark
   * publishes the same items to Pushpin itself, one per event (the events are in the log too, the
   * forwarder's cursor already past them, so Pushpin could still repair from the origin): what
   * Pushpin alone achieves on this machine, for comparison.
   */
  const fanout = async (FANOUT: number, mode: "pipeline" | "direct") => {
    const job = mode === "direct" ? `fan${FANOUT}d` : `fan${FANOUT}`;
    await jobChannel(user.id, job, token);
    const total = FANOUT_RATE * SECONDS;
    sendTimes = shared(total + 10);
    ackTimes = shared(total + 10);
    latencies = new Float64Array(total * FANOUT);
    latN = 0;
    const t0 = Date.now();
    const subs = await subscribeMany(FANOUT, fanBases, job, token, 200);
    const connectS = (Date.now() - t0) / 1000;
    log("fan-out: subscribers connected", { n: subs.length, seconds: connectS, mode });
    const mem0 = { pushpin_mb: pushpinMb(), server_mb: treeRssMb(server.pid!), worker_mb: treeRssMb(worker.pid!) };
    // CPU while the events flow, in % of one core: who takes the machine's cores.
    const cpuNow = () => {
      const own = process.cpuUsage();
      return { pushpin: pushpins.reduce((a, p) => a + treeCpuS(p.child.pid!), 0), server: treeCpuS(server.pid!),
        worker: treeCpuS(worker.pid!), subscribers: (own.user + own.system) / 1e6, t: performance.now() / 1000 };
    };
    const cpu0 = cpuNow();
    recording = true;
    if (mode === "pipeline") await produce(user.id, job, FANOUT_RATE, SECONDS, 1);
    else {
      const chanId = (await admin.query("select id from app_public.channels where user_id = $1 and name = $2", [user.id, job])).rows[0].id;
      await admin.query("insert into app_private.forwarder_cursors (channel_id, seq) values ($1, $2) on conflict (channel_id) do update set seq = excluded.seq", [chanId, total]);
      await admin.query("select app_hidden.emit_event($1, 'job', $2, 'job.run_succeeded', jsonb_build_object('k', g)) from generate_series(1, $3::int) g", [user.id, job, total]);
      const chan = `tdc-${dbName}-${chanId}`;
      // On schedule, not one after the other (Pushpin answers a publish only after its fan-out);
      // Pushpin's sequencer puts items that overtake each other back in prev-id order.
      const start = performance.now();
      const sent: Promise<unknown>[] = [];
      for (let k = 1; k <= total; k++) {
        const due = start + ((k - 1) * 1000) / FANOUT_RATE;
        if (performance.now() < due) await sleep(due - performance.now());
        sendTimes[k] = performance.now();
        const item = directItem(chan, k);
        sent.push(...pushpins.map(async (p) => (await fetch(p.publishUrl, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ items: [item] }) })).text()));
      }
      await Promise.all(sent);
    }
    const mem = { pushpin_mb: pushpinMb(), server_mb: treeRssMb(server.pid!), worker_mb: treeRssMb(worker.pid!) };
    const cpu1 = cpuNow();
    const cpu = Object.fromEntries((["pushpin", "server", "worker", "subscribers"] as const)
      .map((k) => [k, Math.round((100 * (cpu1[k] - cpu0[k])) / (cpu1.t - cpu0.t))]));
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && subs.some((s) => s.count < total)) await sleep(200);
    recording = false;
    const lat = latencies.subarray(0, latN);
    const r = {
      mode, target_subscribers: FANOUT, pushpin_instances: pushpins.length, subscribers: subs.length, connect_seconds: round(connectS, 1), events: total, rate: FANOUT_RATE,
      deliveries: subs.reduce((a, s) => a + s.count, 0), expected_deliveries: total * subs.length,
      not_delivered_within_30s_after: subs.reduce((a, s) => a + (total - s.count), 0), duplicates: subs.reduce((a, s) => a + s.dupes, 0),
      out_of_order: subs.reduce((a, s) => a + s.disorder, 0), still_open: subs.filter((s) => s.open).length,
      reconnected: subs.reduce((a, s) => a + s.reconnects, 0),
      latency_ms: { p50: round(pct(lat, 50)), p99: round(pct(lat, 99)), max: round(pct(lat, 100)) },
      memory_idle_connected: mem0, memory_during_load: mem, cpu_percent_during_load: cpu,
    };
    results.fanout.push(r);
    log("fan-out done", r);
    for (const s of subs) closeSub(s);
    await sleep(2000);
    return r;
  };
  for (const FANOUT of PHASES.includes("fanout") ? FANOUT_STEPS : []) {
    const r = await fanout(FANOUT, "pipeline");
    if (process.env.BENCH_FANOUT_DIRECT) await fanout(FANOUT, "direct");
    if (!process.env.BENCH_FANOUT_ALL && (r.subscribers < FANOUT || r.not_delivered_within_30s_after > 0 || r.latency_ms.p99 > 1000)) break;
  }
} catch (e) {
  log("benchmark failed", { err: (e as Error).stack });
  results.error = (e as Error).message;
  exitCode = 1;
} finally {
  await stopChild(worker);
  await stopChild(server);
  for (const p of pushpins) await p.stop();
  await admin.end();
}

mkdirSync(join(ROOT, "bench", "results"), { recursive: true });
writeFileSync(join(ROOT, "bench", "results", `${OUT}.json`), JSON.stringify(results, null, 2) + "\n");
const L = results.latency, F = results.fanout, T = results.throughput;
const md = [
  "# Realtime benchmark (`npm run bench:realtime`)",
  "",
  `Run ${results.date} on ${results.machine.cpus} CPUs (nofile ${results.machine.nofile}); Postgres, Pushpin, server, worker and all subscribers on the same machine.`,
  "",
  ...(L ?? []).map((L: any) => `## Latency: ${L.subscribers} subscribers, ${L.target_rate} events/s for ${SECONDS} s, ${L.events_per_transaction} event(s) per transaction\n\n` +
    `- achieved produce rate: ${L.achieved_produce_rate}/s; deliveries ${L.deliveries}/${L.expected_deliveries}; lost ${L.lost}, duplicates ${L.duplicates}, out of order ${L.out_of_order}\n` +
    `- statement sent → SSE receipt: p50 ${L.latency_ms.p50} ms, p90 ${L.latency_ms.p90} ms, p99 ${L.latency_ms.p99} ms, p99.9 ${L.latency_ms.p999} ms, max ${L.latency_ms.max} ms\n` +
    `- commit acknowledged → SSE receipt: p50 ${L.commit_ack_to_receipt_ms.p50} ms, p90 ${L.commit_ack_to_receipt_ms.p90} ms, p99 ${L.commit_ack_to_receipt_ms.p99} ms, max ${L.commit_ack_to_receipt_ms.max} ms\n` +
    `- statement sent → commit acknowledged: p50 ${L.statement_send_to_commit_ack_ms.p50} ms, p99 ${L.statement_send_to_commit_ack_ms.p99} ms\n`),
  ...(F ?? []).map((F: any) => `## Fan-out${F.mode === "direct" ? " (published straight to Pushpin by the benchmark)" : ""}: ${F.subscribers} of ${F.target_subscribers} subscribers connected (${F.connect_seconds} s) over ${F.pushpin_instances} Pushpin instance(s), ${F.rate} events/s for ${SECONDS} s\n\n` +
    `- deliveries ${F.deliveries}/${F.expected_deliveries}; not delivered 30 s after the last event ${F.not_delivered_within_30s_after}, duplicates ${F.duplicates}, out of order ${F.out_of_order}; streams still open ${F.still_open}${F.reconnected ? ` (${F.reconnected} reconnected with their last id after Pushpin ended them)` : ""}\n` +
    `- delivery latency: p50 ${F.latency_ms.p50} ms, p99 ${F.latency_ms.p99} ms, max ${F.latency_ms.max} ms\n` +
    `- memory (RSS) while connected: Pushpin (all instances) ${F.memory_idle_connected.pushpin_mb} MB, server ${F.memory_idle_connected.server_mb} MB, worker ${F.memory_idle_connected.worker_mb} MB; during load: Pushpin ${F.memory_during_load.pushpin_mb} MB, server ${F.memory_during_load.server_mb} MB, worker ${F.memory_during_load.worker_mb} MB\n` +
    `- CPU during load (% of one core; the machine has ${results.machine.cpus * 100} %): Pushpin ${F.cpu_percent_during_load.pushpin} %, server ${F.cpu_percent_during_load.server} %, worker ${F.cpu_percent_during_load.worker} %, the benchmark process (subscribers, producer) ${F.cpu_percent_during_load.subscribers} %\n`),
  T ? `## Throughput: ${T.events} events, ${T.subscribers} subscribers, as fast as possible\n\n` +
    `- our pipeline (commit → forwarder → Pushpin): ${T.pipeline.events_per_s} events/s (lost ${T.pipeline.lost}, dupes ${T.pipeline.duplicates})\n` +
    `- published straight to Pushpin: ${T.direct_to_pushpin.events_per_s} events/s (lost ${T.direct_to_pushpin.lost}, dupes ${T.direct_to_pushpin.duplicates})\n` +
    `- ratio pipeline / direct: **${T.ratio}**\n` : "",
  results.error ? `\nFAILED: ${results.error}\n` : "",
].join("\n");
writeFileSync(join(ROOT, "bench", "results", `${OUT}.md`), md);
console.log(md);
process.exit(exitCode);
