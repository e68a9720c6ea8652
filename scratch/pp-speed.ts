import { createServer, request } from "node:http";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { startPushpin } from "/work/wt-tables/server/devstack/pushpin.ts";
import { freePort, freePortRange } from "/work/wt-tables/test/helpers/stack.ts";
const OP = await freePort();
const srv = createServer((req, res) => { let n = 0; req.on("data", (d) => { n += d.length; }); req.on("end", () => res.end("ok " + n)); });
await new Promise<void>((r) => srv.listen(OP, "127.0.0.1", r));
const data = Buffer.alloc(60_000_000, 97);
function post(port: number) {
  return new Promise<number>((resolve, reject) => {
    const t0 = performance.now();
    const req = request({ host: "127.0.0.1", port, method: "POST", path: "/x", headers: { "content-length": data.length } }, (res) => { res.resume(); res.on("end", () => resolve(performance.now() - t0)); });
    req.on("error", reject);
    for (let i = 0; i < data.length; i += 1 << 20) req.write(data.subarray(i, i + (1 << 20)));
    req.end();
  });
}
const PP = await freePort();
const pp = await startPushpin({ id: "speed", dataDir: "/tmp/pp-speed", httpPort: PP, publishPort: await freePort(), zmqBase: await freePortRange(4), origin: "127.0.0.1:" + OP, sigKey: "x" });
try {
  for (let i = 0; i < 3; i++) console.log("direct", Math.round(await post(OP)), "pushpin", Math.round(await post(PP)));
} finally { await pp.stop(); srv.close(); }
