/**
 * CSV in and out of a user's tables over HTTP:
 *   POST /tables/:name/import   the raw body streams into COPY ... FROM STDIN
 *   GET  /tables/:name/export   COPY (select ...) TO STDOUT streams back as CSV
 * Both run as the caller's role (SET LOCAL ROLE in one transaction), so a
 * table that is not theirs simply does not exist for them (404). An import is
 * all or nothing: the COPY's transaction commits only if every row went in.
 * The import log (app_public.imports) and events are written by SQL helpers
 * (functions/40_tables.sql): `started` before any data flows, `failed` after
 * the rollback, `finished` inside the import's own transaction.
 *
 * User code (triggers, policies, defaults, functions behind views...) must never
 * run in this session outside a definer function: the login role could switch
 * to any user's role from there. Exports read through a throwaway definer
 * function of the user (rolled back); imports COPY straight into the table only
 * when app_hidden.write_runs_no_user_code says nothing of the user's can run
 * ("fast" path), else COPY into a temp staging table and insert from it inside
 * a throwaway definer function ("safe" path). See docs/import.md.
 *
 * HTTP error codes (body `{error: {code, message, line?, column?, value?}}`):
 *   TDA07 401 not signed in          TDI01 400 empty body          TDI02 422 no data rows
 *   TDI03 422 bad header             TDI04 404 no such table       TDI05 400 bad option
 *   TDI06 413 upload too large       TDI07 422 malformed CSV       TDI08 422 invalid value
 *   TDI09 422 invalid encoding       TDI10 422 constraint violated TDI11 400/415 bad content-encoding or gzip
 *   TDI12 409 table exists (create)  TDI13 415 unsupported content-type
 *   TDI14 400 unsupported export format / upload aborted          TDT01 400 invalid new table name
 *   TDI15 409 a deferrable constraint trigger would run user code at commit (refused)
 *   TDI16 403 the table's own code tried something refused (e.g. a role change) or lacks a privilege
 *   TDI17 422 the table's own code (trigger, policy, default, check) raised an error
 */
import type { Express, Request, Response } from "express";
import type pg from "pg";
import { pipeline } from "node:stream/promises";
import { Readable, Transform } from "node:stream";
import { createGunzip } from "node:zlib";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import copyStreams from "pg-copy-streams";
import { config } from "../config.ts";
import { logger } from "../log.ts";
import { authenticate, type Auth } from "../auth.ts";
import { isUnavailable, resourceError } from "../errors.ts";
import { firstLineEnd, splitCsvLine, columnNameFrom, TypeInferrer, type CsvDialect } from "./csv.ts";

const { from: copyFrom, to: copyTo } = copyStreams;

export class ImportError extends Error {
  constructor(public status: number, public code: string, message: string,
              public detail: { line?: number; column?: string; value?: string; pgCode?: string } = {}) {
    super(message);
  }
}

interface ImportOptions {
  header: boolean; delimiter: string; quote: string; nullString: string; encoding: string;
  mode: "append" | "replace"; create: boolean;
}

const OPTION_NAMES = new Set(["header", "delimiter", "quote", "null", "encoding", "mode", "create", "access_token"]);
const CONTENT_TYPES = /^(text\/csv|application\/csv|text\/plain|application\/octet-stream|text\/tab-separated-values)\b/i;

function bool(v: unknown, name: string, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (v === "true" || v === "1") return true;
  if (v === "false" || v === "0") return false;
  throw new ImportError(400, "TDI05", `${name} must be true or false`);
}

function oneChar(v: unknown, name: string, dflt: string): string {
  if (v === undefined) return dflt;
  if (v === "tab") return "\t";
  if (typeof v !== "string" || v.length !== 1 || v.charCodeAt(0) > 127 || v === "\n" || v === "\r") {
    throw new ImportError(400, "TDI05", `${name} must be a single ASCII character other than a line end`);
  }
  return v;
}

export function parseOptions(q: Request["query"]): ImportOptions {
  for (const k of Object.keys(q)) {
    if (!OPTION_NAMES.has(k)) throw new ImportError(400, "TDI05", `Unknown option "${k.slice(0, 40)}" (allowed: header, delimiter, quote, null, encoding, mode, create)`);
    if (typeof q[k] !== "string") throw new ImportError(400, "TDI05", `Option "${k}" given more than once`);
  }
  const o: ImportOptions = {
    header: bool(q.header, "header", true),
    delimiter: oneChar(q.delimiter, "delimiter", ","),
    quote: oneChar(q.quote, "quote", '"'),
    nullString: q.null === undefined ? "" : String(q.null),
    encoding: q.encoding === undefined ? "UTF8" : String(q.encoding),
    mode: (q.mode ?? "append") as ImportOptions["mode"],
    create: bool(q.create, "create", false),
  };
  if (o.mode !== "append" && o.mode !== "replace") throw new ImportError(400, "TDI05", "mode must be append or replace");
  if (o.delimiter === o.quote) throw new ImportError(400, "TDI05", "delimiter and quote must differ");
  if (o.nullString.length > 100 || /[\r\n]/.test(o.nullString) || o.nullString.includes(o.delimiter) || o.nullString.includes(o.quote)) {
    throw new ImportError(400, "TDI05", "null must be at most 100 characters, without line ends, delimiter or quote");
  }
  if (!/^[A-Za-z0-9_-]{1,20}$/.test(o.encoding)) throw new ImportError(400, "TDI05", "encoding must be a Postgres encoding name, e.g. UTF8 or LATIN1");
  return o;
}

const isUtf8 = (enc: string) => /^utf-?8$/i.test(enc) || /^unicode$/i.test(enc);

/** Run `fn` in a transaction as the caller's role, the way every route acts for a user. */
async function asUser<T>(pool: pg.Pool, auth: Auth, fn: (c: pg.PoolClient) => Promise<T>, end: "commit" | "rollback" = "commit"): Promise<T> {
  const c = await pool.connect();
  let broken = false;
  try {
    await c.query("begin");
    await c.query("select set_config('role', $1, true), set_config('tdc.session_id', $2, true)", [auth.role, auth.sessionId ?? ""]);
    const r = await fn(c);
    await c.query(end);
    return r;
  } catch (e) {
    await c.query("rollback").catch(() => { broken = true; });
    throw e;
  } finally {
    c.release(broken);
  }
}

/** Counts bytes passing through and fails the stream past `max`. */
class Meter extends Transform {
  bytes = 0;
  constructor(private max: number) { super({ highWaterMark: 1 << 20 }); }
  _transform(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null, d?: Buffer) => void) {
    this.bytes += chunk.length;
    if (this.bytes > this.max) return cb(new ImportError(413, "TDI06", `Upload is larger than the maximum of ${this.max} bytes; nothing was imported`));
    cb(null, chunk);
  }
}

/** Postgres's error from COPY, as the answer the client gets. */
function fromPgError(e: any): ImportError {
  const code: string = e?.code ?? "";
  if (isUnavailable(e)) return new ImportError(503, "TDX01", "The database is unavailable right now; try again shortly");
  const exhausted = resourceError(e);
  if (exhausted) return new ImportError(exhausted.status, exhausted.code, exhausted.message.replace("nothing was changed", "nothing was imported"));
  const detail: ImportError["detail"] = { pgCode: code };
  const where = String(e?.where ?? "").split("\n").find((l) => l.startsWith("COPY "));
  if (where) {
    const m = /, line (\d+)(?:, column (.+?))?(?:: "([\s\S]*)")?$/.exec(where);
    if (m) {
      detail.line = Number(m[1]);
      if (m[2]) detail.column = m[2];
      if (m[3] !== undefined) detail.value = m[3].length > 100 ? m[3].slice(0, 100) + "…" : m[3];
    }
  }
  if (!detail.column && e?.column) detail.column = e.column;
  const msg: string = e?.message ?? "import failed";
  if (code === "22P04") return new ImportError(422, "TDI07", msg, detail);
  if (code === "22021" || code === "22P05") return new ImportError(422, "TDI09", msg, detail);
  if (code.startsWith("23")) return new ImportError(422, "TDI10", msg, detail);
  if (code.startsWith("22") || code === "54000") return new ImportError(422, "TDI08", msg, detail);
  if (code === "TDT01") return new ImportError(400, "TDT01", msg);
  if (code === "TDT05" || code === "TDT02") return new ImportError(422, "TDI03", msg);
  if (code === "TDI04") return new ImportError(404, "TDI04", msg);
  if (code === "TDI05") return new ImportError(400, "TDI05", msg);
  if (code === "TDI12" || code === "TDT03") return new ImportError(409, "TDI12", msg);
  if (code === "TDI15") return new ImportError(409, "TDI15", msg);
  if (code === "42501") return new ImportError(403, "TDI16", msg, detail);
  if (code.startsWith("P0")) return new ImportError(422, "TDI17", msg, detail);
  const id = Math.random().toString(36).slice(2, 10);
  logger.error({ errorId: id, err: msg, code }, "import failed unexpectedly");
  return new ImportError(500, "TDX00", `Internal error (id: ${id})`);
}

function sendError(res: Response, e: ImportError) {
  if (res.headersSent) { res.destroy(); return; }
  const { pgCode, ...where } = e.detail;
  res.status(e.status).json({ error: { code: e.code, message: e.message, ...where, ...(pgCode ? { pgCode } : {}) } });
}

/**
 * Reads the start of the stream: strips a UTF-8 BOM and, with a header,
 * collects the whole first line. Returns what was read (to be sent on) and
 * an iterator positioned after it.
 */
async function readHead(src: AsyncIterator<Buffer>, o: ImportOptions): Promise<{ head: Buffer; headerLine: Buffer | null; done: boolean }> {
  const parts: Buffer[] = [];
  let len = 0, done = false, lineEnd = -1;
  const quote = o.quote.charCodeAt(0);
  for (;;) {
    const head = Buffer.concat(parts, len);
    if (o.header) { lineEnd = firstLineEnd(head, quote); if (lineEnd >= 0) break; }
    else if (len >= 3) break;
    if (len > 1 << 20) throw new ImportError(422, "TDI03", "The header line is longer than 1 MiB", { line: 1 });
    const r = await src.next();
    if (r.done) { done = true; break; }
    parts.push(r.value); len += r.value.length;
  }
  let head = Buffer.concat(parts, len);
  if (isUtf8(o.encoding) && head.length >= 3 && head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf) {
    head = head.subarray(3);
    if (lineEnd > 0) lineEnd -= 3;
  }
  if (!o.header) return { head, headerLine: null, done };
  return { head, headerLine: lineEnd >= 0 ? head.subarray(0, lineEnd - 1) : head, done };
}

function decodeHeader(line: Buffer, o: ImportOptions): string[] {
  let text: string;
  try {
    text = new TextDecoder(isUtf8(o.encoding) ? "utf-8" : /^win1252$/i.test(o.encoding) ? "windows-1252" : "latin1", { fatal: true }).decode(line);
  } catch {
    throw new ImportError(422, "TDI09", `The header line is not valid ${o.encoding}`, { line: 1 });
  }
  return splitCsvLine(text, dialect(o));
}

const dialect = (o: ImportOptions): CsvDialect => ({ delimiter: o.delimiter.charCodeAt(0), quote: o.quote.charCodeAt(0), nullString: o.nullString });

function copySql(c: pg.PoolClient, schema: string, table: string, cols: string[], o: ImportOptions): string {
  const ident = (s: string) => c.escapeIdentifier(s);
  return `copy ${ident(schema)}.${ident(table)} (${cols.map(ident).join(", ")}) from stdin with (format csv, header ${o.header}, ` +
    `delimiter ${c.escapeLiteral(o.delimiter)}, quote ${c.escapeLiteral(o.quote)}, null ${c.escapeLiteral(o.nullString)}, ` +
    `encoding ${c.escapeLiteral(o.encoding)})`;
}

/** Header names → the COPY column list, checked against the table's insertable columns. */
function columnsFromHeader(names: string[], tableCols: string[]): string[] {
  const known = new Set(tableCols);
  const seen = new Set<string>();
  for (const n of names) {
    if (n === "") throw new ImportError(422, "TDI03", "The header has an empty column name", { line: 1 });
    if (!known.has(n)) throw new ImportError(422, "TDI03", `Unknown column "${n.slice(0, 100)}" in the header (the table has: ${tableCols.join(", ").slice(0, 500)})`, { line: 1, column: n.slice(0, 100) });
    if (seen.has(n)) throw new ImportError(422, "TDI03", `Column "${n.slice(0, 100)}" appears twice in the header`, { line: 1, column: n.slice(0, 100) });
    seen.add(n);
  }
  return names;
}

async function* chain(head: Buffer, rest: AsyncIterator<Buffer>): AsyncGenerator<Buffer> {
  if (head.length) yield head;
  for (;;) {
    const r = await rest.next();
    if (r.done) return;
    yield r.value;
  }
}

export function installTables(app: Express, pool: pg.Pool) {
  app.use("/tables", authenticate(pool));

  app.post("/tables/:name/import", async (req, res) => {
    const auth = req.tdcAuth!;
    const started = Date.now();
    const name = String(req.params.name);
    let importId: string | null = null;
    let raw: Meter | null = null;
    try {
      if (!auth.userId) throw new ImportError(401, "TDA07", "You must be signed in");
      const o = parseOptions(req.query);
      const ctype = req.headers["content-type"];
      if (ctype && !CONTENT_TYPES.test(ctype)) throw new ImportError(415, "TDI13", "Send the CSV as the raw body with Content-Type: text/csv");
      const cenc = String(req.headers["content-encoding"] ?? "identity").toLowerCase();
      if (cenc !== "identity" && cenc !== "gzip") throw new ImportError(415, "TDI11", "Content-Encoding must be gzip or none");
      const max = config.maxImportBytes;
      const declared = Number(req.headers["content-length"] ?? NaN);
      if (declared > max) throw new ImportError(413, "TDI06", `Upload is larger than the maximum of ${max} bytes; nothing was imported`);

      // Short transaction, committed before any data flows: the target is checked and the
      // import is on record (import.started reaches subscribers now, not at the end).
      const target = await asUser(pool, auth, async (c) => {
        const { rows } = await c.query("select schema_name, table_name, columns from app_hidden.import_target($1, $2, $3)", [name, o.create, o.encoding]);
        const opts = { header: o.header, delimiter: o.delimiter, quote: o.quote, null: o.nullString, encoding: o.encoding };
        const id = await c.query("select app_hidden.import_started($1, $2, $3, $4) as id", [name, o.mode, o.create, opts]);
        return { ...rows[0], id: String(id.rows[0].id) } as { schema_name: string; table_name: string; columns: Array<{ name: string }>; id: string };
      }).catch((e) => { throw e instanceof ImportError ? e : fromPgError(e); });
      importId = target.id;

      // The body: raw bytes counted (and capped), gunzipped when sent so, counted again
      // (a small gzip must not expand past the cap either). Pushpin drops the request's
      // Content-Encoding header, so a body starting with the gzip magic bytes is gzip too
      // (no CSV starts with 0x1f 0x8b).
      const first = await peek(req);
      const gzip = cenc === "gzip" || (first !== null && first.length >= 2 && first[0] === 0x1f && first[1] === 0x8b);
      raw = new Meter(max);
      const stages: Transform[] = [raw];
      if (gzip) stages.push(createGunzip({ chunkSize: 1 << 16 }), new Meter(max));
      const body = stages.length === 1 ? raw : (stages.reduce((a, b) => (a.pipe(b), b)) as Transform);
      for (const s of stages) s.on("error", (e) => { for (const t of stages) if (t !== s) t.destroy(e); });
      req.on("close", () => { if (!req.complete) raw!.destroy(new ImportError(400, "TDI14", "The upload was aborted")); });
      req.pipe(raw);

      let result = { rows: 0, path: "fast" as ImportPath };
      const progress = startProgress(pool, auth, importId, () => raw!.bytes);
      try {
        result = await importBody(pool, auth, body, target, o, () => ({ bytes: raw!.bytes, ms: Date.now() - started }));
      } finally {
        await progress.stop();
      }
      // (import_finished ran inside importBody's transaction.)
      logger.info({ importId, path: result.path, rows: result.rows }, "import finished");
      res.status(200).json({ table: target.table_name, rows: result.rows, bytes: raw.bytes, ms: Date.now() - started, importId: Number(importId), created: o.create, path: result.path });
    } catch (err: any) {
      const e = err instanceof ImportError ? err : (err?.code === "Z_DATA_ERROR" || err?.code === "Z_BUF_ERROR" || err?.errno < 0 && /gzip|header check|unexpected end/i.test(err?.message ?? ""))
        ? new ImportError(400, "TDI11", "The body is not valid gzip") : fromPgError(err);
      if (raw) {
        // Stop reading: what is left of the upload is discarded and the connection closed.
        req.unpipe(raw); raw.destroy(); req.resume(); res.set("connection", "close");
      }
      if (importId) {
        const { pgCode: _p, ...where } = e.detail;
        await asUser(pool, auth, (c) => c.query("select app_hidden.import_failed($1, $2, $3, $4)",
          [importId, { code: e.code, message: e.message, ...where }, raw?.bytes ?? 0, Date.now() - started]))
          .catch((x) => logger.error({ err: x.message, importId }, "could not record failed import"));
      }
      if (e.status >= 500) logger.error({ err: err?.message, code: e.code }, "import failed");
      sendError(res, e);
    }
  });

  app.get("/tables/:name/export", async (req, res) => {
    const auth = req.tdcAuth!;
    const name = String(req.params.name);
    try {
      if (!auth.userId) throw new ImportError(401, "TDA07", "You must be signed in");
      const format = req.query.format ?? "csv";
      if (format !== "csv") throw new ImportError(400, "TDI14", "format must be csv");
      // The rows come from a throwaway definer function of the user (user code behind a view or
      // a policy cannot change role there); the transaction is rolled back, taking it along.
      await asUser(pool, auth, async (c) => {
        const t = await c.query("select relation_name, app_hidden.export_function($1) as fn from app_hidden.export_target($1)", [name]).catch((e) => { throw fromPgError(e); });
        const { relation_name, fn } = t.rows[0];
        await c.query("set transaction read only");
        res.setHeader("content-type", "text/csv; charset=utf-8");
        res.setHeader("content-disposition", `attachment; filename="${relation_name.replace(/[^A-Za-z0-9_.-]/g, "_")}.csv"`);
        res.setHeader("cache-control", "no-store");
        const out = c.query(copyTo(`copy (select * from ${fn}()) to stdout with (format csv, header true)`));
        // COPY sends the header line before the function has run; hold it until the first row (the
        // function's result is complete by then) or the end, so that an error from the user's code
        // (e.g. a refused role change) still gets a clean JSON answer instead of a cut-off download.
        const it = out[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
        const held: Buffer[] = [];
        let ended = false;
        while (held.length < 2) {
          const r = await it.next().catch((e) => { throw fromPgError(e); });
          if (r.done) { ended = true; break; }
          held.push(r.value);
        }
        await pipeline(Readable.from(chain(Buffer.concat(held), ended ? emptyIter() : it)), res);
      }, "rollback");
    } catch (err: any) {
      sendError(res, err instanceof ImportError ? err : fromPgError(err));
    }
  });
}

/** The first chunk of the body, put back for whoever reads next (null: the body is empty). */
function peek(req: Request): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const done = (v: Buffer | null, e?: Error) => {
      req.off("readable", onReadable); req.off("end", onEnd); req.off("error", onError);
      if (e) return reject(e);
      if (v) req.unshift(v);
      resolve(v);
    };
    const onReadable = () => { const c = req.read() as Buffer | null; if (c) done(c); };
    const onEnd = () => done(null);
    const onError = (e: Error) => done(null, e);
    req.on("readable", onReadable); req.on("end", onEnd); req.on("error", onError);
  });
}

/** import.progress at most once a second while the data flows (own short transactions). */
function startProgress(pool: pg.Pool, auth: Auth, importId: string, bytes: () => number) {
  let inFlight: Promise<unknown> | null = null;
  const timer = setInterval(() => {
    if (inFlight) return;
    inFlight = asUser(pool, auth, (c) => c.query("select app_hidden.import_progress($1, $2)", [importId, bytes()]))
      .catch((e) => logger.warn({ err: e.message, importId }, "import progress not recorded"))
      .finally(() => { inFlight = null; });
  }, 1000);
  timer.unref();
  return { stop: async () => { clearInterval(timer); await inFlight; } };
}

type ImportPath = "fast" | "safe";

/**
 * The data: one transaction as the caller. create=true spools the body to a
 * temp file while inferring types, defines the table, then COPYs the file;
 * otherwise the body goes straight into COPY. mode=replace deletes the old rows
 * first in the same transaction (MVCC: readers keep seeing them until commit).
 */
async function importBody(pool: pg.Pool, auth: Auth, body: Transform, target: { schema_name: string; table_name: string; columns: Array<{ name: string }>; id: string },
  o: ImportOptions, stats: () => { bytes: number; ms: number }): Promise<{ rows: number; path: ImportPath }> {
  const src = body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const { head, headerLine, done } = await readHead(src, o);
  if (head.length === 0) throw new ImportError(400, "TDI01", "The body is empty: send the CSV as the request body");
  const headerNames = headerLine ? decodeHeader(headerLine, o) : null;

  let spool: { dir: string; file: string } | null = null;
  let cols: string[];
  let types: string[] = [];
  try {
    if (o.create) {
      const dir = await mkdtemp(join(tmpdir(), "tdc-import-"));
      spool = { dir, file: join(dir, "body.csv") };
      const inferrer = new TypeInferrer(dialect(o), o.header);
      const ws = createWriteStream(spool.file, { mode: 0o600 });
      await pipeline(Readable.from(chain(head, done ? emptyIter() : src)), new Transform({
        transform(chunk: Buffer, _e, cb) { inferrer.push(chunk); cb(null, chunk); },
      }), ws);
      types = inferrer.finish();
      const taken = new Set<string>();
      const n = Math.max(types.length, headerNames?.length ?? 0);
      cols = Array.from({ length: n }, (_, i) => columnNameFrom(headerNames?.[i] ?? "", i, taken));
      if (headerNames && headerNames.length < types.length) cols = cols.slice(0, headerNames.length);
      types = cols.map((_, i) => types[i] ?? "text");
    } else if (headerNames) {
      cols = columnsFromHeader(headerNames, target.columns.map((c) => c.name));
    } else {
      cols = target.columns.map((c) => c.name);
    }

    const c = await pool.connect();
    let broken = false;
    try {
      await c.query("begin");
      await c.query("select set_config('role', $1, true), set_config('tdc.session_id', $2, true)", [auth.role, auth.sessionId ?? ""]);
      if (o.create) {
        await c.query("select app_public.define_table($1, array(select row(x.name, x.type, true, null, false, false)::app_public.column_spec from jsonb_to_recordset($2) as x(name text, type text)))",
          [target.table_name, JSON.stringify(cols.map((name, i) => ({ name, type: types[i] })))]);
      }
      // Locks the table (no trigger/policy/default can be added from now on) and decides the path.
      const plan = (await c.query("select app_hidden.import_plan($1) as p", [target.table_name])).rows[0].p as { fast: boolean };
      const path: ImportPath = plan.fast ? "fast" : "safe";
      // The safe path runs the user's code (in a definer function, but it may still leave session
      // settings behind): that connection is not reused.
      if (!plan.fast) broken = true;
      let into = { schema: target.schema_name, table: target.table_name };
      if (plan.fast && o.mode === "replace" && !o.create) {
        await c.query(`delete from ${c.escapeIdentifier(target.schema_name)}.${c.escapeIdentifier(target.table_name)}`);
      }
      if (!plan.fast) {
        const stage = (await c.query("select app_hidden.import_stage($1, $2) as s", [target.table_name, cols])).rows[0].s as string;
        into = { schema: "pg_temp", table: stage };
      }
      const copy = c.query(copyFrom(copySql(c, into.schema, into.table, cols, o)));
      if (spool) await pipeline(createReadStream(spool.file, { highWaterMark: 1 << 20 }), copy);
      else await pipeline(Readable.from(chain(head, done ? emptyIter() : src)), copy);
      let rows = copy.rowCount;
      if (rows === 0) throw new ImportError(422, "TDI02", o.header ? "The file has a header but no data rows; nothing was imported" : "The file has no data rows");
      if (!plan.fast) {
        const r = await c.query("select app_hidden.import_from_stage($1, $2, $3, $4) as n", [target.table_name, into.table, cols, o.mode === "replace"]);
        rows = Number(r.rows[0].n);
      }
      // Nothing of the user's may run at COMMIT: no deferrable constraint trigger, no open cursor.
      await c.query("select app_hidden.import_check_commit()");
      await c.query("close all");
      const { bytes, ms } = stats();
      await c.query("select app_hidden.import_finished($1, $2, $3, $4)", [target.id, rows, bytes, ms]);
      await c.query("commit");
      return { rows, path };
    } catch (e) {
      await c.query("rollback").catch(() => { broken = true; });
      throw e;
    } finally {
      c.release(broken);
    }
  } finally {
    if (spool) await rm(spool.dir, { recursive: true, force: true });
  }
}

async function* emptyGen(): AsyncGenerator<Buffer> { /* nothing */ }
const emptyIter = (): AsyncIterator<Buffer> => emptyGen();
