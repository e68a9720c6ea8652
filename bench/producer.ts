/**
 * The realtime benchmark's event producer, on its own thread: the main thread parses every
 * subscriber's stream, and a producer sharing that event loop fell behind its schedule whenever
 * a burst of deliveries was being read. Emits `rate` events/s for `seconds` (perTx events per
 * transaction, keys k0…), writing each key's send and commit-acknowledged times (ms on the main
 * thread's clock) into the shared arrays; posts the per-transaction send → ack times at the end.
 */
import { parentPort, workerData } from "node:worker_threads";
import { performance } from "node:perf_hooks";
import pg from "pg";

const { adminUrl, conns, userId, job, rate, seconds, k0, perTx, sendBuf, ackBuf, origin } = workerData as {
  adminUrl: string; conns: number; userId: string; job: string; rate: number; seconds: number; k0: number; perTx: number;
  sendBuf: SharedArrayBuffer; ackBuf: SharedArrayBuffer; origin: number;
};
const sendTimes = new Float64Array(sendBuf);
const ackTimes = new Float64Array(ackBuf);
const now = () => performance.timeOrigin + performance.now() - origin;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const pool = new pg.Pool({ connectionString: adminUrl, max: conns });
const total = Math.round(rate * seconds);
const commitMs: number[] = [];
const inflight = new Set<Promise<unknown>>();
const t0 = performance.now();
let issued = 0;
while (issued < total) {
  const due = Math.min(total, Math.floor(((performance.now() - t0) / 1000) * rate));
  while (issued < due) {
    const k = k0 + issued;
    const n = Math.min(perTx, total - issued);
    issued += n;
    const sent = now();
    for (let j = 0; j < n; j++) if (k + j < sendTimes.length) sendTimes[k + j] = sent;
    const p = pool.query("select app_hidden.emit_event($1, 'job', $2, 'job.run_succeeded', jsonb_build_object('k', g)) from generate_series($3::int, $4::int) g", [userId, job, k, k + n - 1])
      .then(() => { const a = now(); for (let j = 0; j < n; j++) if (k + j < ackTimes.length) ackTimes[k + j] = a; commitMs.push(a - sent); });
    inflight.add(p);
    p.finally(() => inflight.delete(p));
  }
  await sleep(2);
}
await Promise.all(inflight);
await pool.end();
parentPort!.postMessage({ total, commitMs });
