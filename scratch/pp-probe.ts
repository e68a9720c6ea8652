import { createServer } from "node:http";
import { startPushpin } from "/work/wt-tables/server/devstack/pushpin.ts";
import { freePort, freePortRange } from "/work/wt-tables/test/helpers/stack.ts";
const srv = createServer((req, res) => {
  const t0 = Date.now();
  console.log("origin got request", req.method, JSON.stringify(req.headers));
  let n = 0;
  req.on("data", (d) => { n += d.length; console.log("chunk", d.length, Date.now() - t0); });
  req.on("end", () => { res.end("ok " + n); });
});
await new Promise<void>((r) => srv.listen(39111, "127.0.0.1", r));
const PP = await freePort();
const pp = await startPushpin({ id: "probe", dataDir: "/tmp/pp-probe", httpPort: PP, publishPort: await freePort(), zmqBase: await freePortRange(4), origin: "127.0.0.1:39111", sigKey: "x" });
try {
  const enc = new TextEncoder();
  let rel!: () => void; const gate = new Promise<void>((r) => (rel = r));
  const body = new ReadableStream({ async start(c) { c.enqueue(enc.encode("hello\n")); await gate; c.enqueue(enc.encode("world\n")); c.close(); } });
  setTimeout(() => { console.log("releasing"); rel(); }, 1500);
  const r = await fetch(`http://127.0.0.1:${PP}/x`, { method: "POST", body, duplex: "half", headers: { "content-encoding": "gzip", "content-type": "text/csv" } } as any);
  console.log(r.status, await r.text());
  const r2 = await fetch(`http://127.0.0.1:${PP}/x`, { method: "POST", body: "abc", headers: { "content-encoding": "gzip", "content-type": "text/csv" } } as any);
  console.log(r2.status, await r2.text());
} finally { await pp.stop(); srv.close(); }
