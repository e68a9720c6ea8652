import { TypeInferrer } from "../server/routes/csv.ts";
const rows: string[] = ["id,name,amount,created_at,active"];
const base = Date.UTC(2024, 0, 1) / 1000;
for (let i = 1; i <= 1_000_000; i++) {
  const ts = new Date((base + i * 37) * 1000).toISOString().slice(0, 19) + "Z";
  rows.push(`${i},customer_${i.toString(36)}_${(i * 7919 % 100000).toString(16)},${(i * 31 % 1000000) / 100},${ts},${i % 3 === 0 ? "true" : "false"}`);
}
const buf = Buffer.from(rows.join("\n") + "\n");
for (let k = 0; k < 3; k++) {
  const t0 = performance.now();
  const inf = new TypeInferrer({ delimiter: 44, quote: 34, nullString: "" }, true);
  for (let i = 0; i < buf.length; i += 65536) inf.push(buf.subarray(i, i + 65536));
  const types = inf.finish();
  console.log((buf.length / 1e6).toFixed(1), "MB", Math.round(performance.now() - t0), "ms", types.join(","));
}
