import test from "ava";
import { TypeInferrer, splitCsvLine, columnNameFrom, firstLineEnd } from "../server/routes/csv.ts";

const dialect = { delimiter: 44, quote: 34, nullString: "" };

function infer(csv: string, opts: { header?: boolean; split?: number } = {}) {
  const inf = new TypeInferrer(dialect, opts.header ?? true);
  const buf = Buffer.from(csv);
  const step = opts.split ?? buf.length;
  for (let i = 0; i < buf.length; i += step) inf.push(buf.subarray(i, i + step));
  return { types: inf.finish(), header: inf.header, rows: inf.rows };
}

const SAMPLE = [
  'i,b,n,d,bo,dt,ts,u,j,t,e,q',
  '1,3000000000,1.5,1e3,true,2024-02-29,2024-01-02 03:04:05+02,a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,"{""a"":1}",x,,"quoted, text"',
  '-2,4,2,-0.5,F,1999-12-31,2024-01-02T03:04:05.123Z,A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11,[1],"multi',
  'line",,"x ""y"""',
].join("\r\n") + "\r\n";

test("types are inferred over every value, the same however the bytes are chunked", (t) => {
  const expected = ["integer", "bigint", "numeric", "double precision", "boolean", "date", "timestamptz", "uuid", "jsonb", "text", "text", "text"];
  for (const split of [1, 2, 3, 7, 64, 100000]) {
    const r = infer(SAMPLE, { split });
    t.deepEqual(r.types, expected, `split ${split}`);
    t.is(r.rows, 2);
    t.deepEqual(r.header, ["i", "b", "n", "d", "bo", "dt", "ts", "u", "j", "t", "e", "q"]);
  }
});

test("one late value widens or demotes the whole column; invalid dates and empty quoted strings are text", (t) => {
  t.deepEqual(infer("a,b,c,d\n1,1,2024-02-30,\"\"\n2,x,2024-01-01,1\n99999999999,2,2024-01-01,1\n").types, ["bigint", "text", "text", "text"]);
  t.deepEqual(infer("a\n1\n1.5\n").types, ["numeric"]);
  t.deepEqual(infer("a\n99999999999999999999\n").types, ["numeric"]);
  t.deepEqual(infer("a\n1\n").types, ["integer"]);
  t.deepEqual(infer("a,b\n,\n").types, ["text", "text"], "a column of nulls only is text");
  t.deepEqual(infer("1,t\n2,f", { header: false }).types, ["integer", "boolean"]);
});

test("header helpers: first line end respects quotes; fields split; names made valid and unique", (t) => {
  t.is(firstLineEnd(Buffer.from('"a\nb",c\nx'), 34), 8);
  t.is(firstLineEnd(Buffer.from('"a\nb",c'), 34), -1);
  t.deepEqual(splitCsvLine('a,"b,c","d""e",\r', dialect), ["a", "b,c", 'd"e', ""]);
  const taken = new Set<string>();
  t.deepEqual(["First Name", "first name", "2nd", "", "Ünïcödé!"].map((n, i) => columnNameFrom(n, i, taken)),
    ["first_name", "first_name_2", "c_2nd", "column4", "unicode"]);
});
