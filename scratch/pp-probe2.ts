import { createServer, request } from "node:http";
import { startPushpin } from "/work/wt-tables/server/devstack/pushpin.ts";
import { freePort, freePortRange } from "/work/wt-tables/test/helpers/stack.ts";
const OP = await freePort();
const srv = createServer((req, res) => {
  const t0 = Date.now();
  console.log("origin got request", req.method, req.headers["content-length"], req.headers["transfer-encoding"]);
  let n = 0;
  req.on("data", (d) => { n += d.length; if (n < 100000 || Math.random() < 0.01) console.log("chunk", d.length, Date.now() - t0); });
  req.on("end", () => { res.end("ok " + n); });
});
await new Promise<void>((r) => srv.listen(OP, "127.0.0.1", r));
const PP = await freePort();
const pp = await startPushpin({ id: "probe", dataDir: "/tmp/pp-probe", httpPort: PP, publishPort: await freePort(), zmqBase: await freePortRange(4), origin: "127.0.0.1:" + OP, sigKey: "x" });
try {
  await new Promise<void>((resolve) => {
    const req = request({ host: "127.0.0.1", port: PP, method: "POST", path: "/x", headers: { "content-length": 2000000, "content-type": "text/csv" } }, (res) => { res.on("data", (d) => console.log("resp", String(d))); res.on("end", resolve); });
    req.write(Buffer.alloc(1000000, 97));
    setTimeout(() => { console.log("second half"); req.end(Buffer.alloc(1000000, 98)); }, 1500);
  });
} finally { await pp.stop(); srv.close(); }
