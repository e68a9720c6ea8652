/**
 * Small CSV pieces the import route needs before Postgres sees the data:
 * reading the header line (to check names and order the COPY column list),
 * and inferring column types over a whole file for `create=true`. A single
 * pass over raw bytes with a quote-aware tokenizer: no rows are kept, only a
 * few flags per column, so memory stays flat however large the file.
 */

export interface CsvDialect { delimiter: number; quote: number; nullString: string }

/** The fields of one CSV line (without its line end), per the dialect. */
export function splitCsvLine(line: string, d: CsvDialect): string[] {
  const delim = String.fromCharCode(d.delimiter), quote = String.fromCharCode(d.quote);
  const out: string[] = [];
  let cur = "", inQ = false, i = 0;
  if (line.endsWith("\r")) line = line.slice(0, -1);
  while (i < line.length) {
    const ch = line[i];
    if (inQ) {
      if (ch === quote) {
        if (line[i + 1] === quote) { cur += quote; i += 2; continue; }
        inQ = false; i++; continue;
      }
      cur += ch; i++; continue;
    }
    if (ch === quote) { inQ = true; i++; continue; }
    if (ch === delim) { out.push(cur); cur = ""; i++; continue; }
    cur += ch; i++;
  }
  out.push(cur);
  return out;
}

/**
 * Offset just past the first line end that is not inside quotes, or -1 when
 * the buffer holds no complete first line yet.
 */
export function firstLineEnd(buf: Buffer, quote: number): number {
  let inQ = false;
  for (let i = 0; i < buf.length; i++) {
    const b = buf[i];
    if (b === quote) inQ = !inQ; // a doubled quote toggles twice: same state
    else if (b === 10 && !inQ) return i + 1;
  }
  return -1;
}

/** A header name turned into a valid lowercase identifier (for create=true). */
export function columnNameFrom(raw: string, index: number, taken: Set<string>): string {
  let n = raw.normalize("NFKD").replace(/[\u0300-\u036f]/g, "").toLowerCase()
    .replace(/[^a-z0-9_]+/g, "_").replace(/^_+|_+$/g, "");
  if (!n) n = `column${index + 1}`;
  if (/^[0-9]/.test(n)) n = "c_" + n;
  n = n.slice(0, 55);
  let name = n, k = 2;
  while (taken.has(name)) name = `${n}_${k++}`;
  taken.add(name);
  return name;
}

// Candidate types, narrowest first; a column keeps the first one every value fits.
const INT = 1, BIGINT = 2, NUMERIC = 4, DOUBLE = 8, BOOL = 16, DATE = 32, TSTZ = 64, UUID = 128, JSON_ = 256;
const ALL = 511;
const ORDER: Array<[number, string]> = [
  [INT, "integer"], [BIGINT, "bigint"], [NUMERIC, "numeric"], [DOUBLE, "double precision"], [BOOL, "boolean"],
  [DATE, "date"], [TSTZ, "timestamptz"], [UUID, "uuid"], [JSON_, "jsonb"],
];

const reInt = /^[+-]?\d+$/;
const reNum = /^[+-]?(\d+\.?\d*|\.\d+)$/;
const reDouble = /^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$|^[+-]?(nan|infinity|inf)$/i;
const reBool = /^(true|false|t|f|yes|no)$/i;
const reDate = /^(\d{4})-(\d{2})-(\d{2})$/;
const reTs = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)? ?(?:Z|[+-]\d{2}(?::?\d{2})?)?$/i;
const reUuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function validDate(y: number, m: number, d: number) {
  if (y < 1 || m < 1 || m > 12 || d < 1) return false;
  const dim = new Date(Date.UTC(y, m, 0)).getUTCDate();
  return d <= dim;
}

function fits(v: string, cand: number): number {
  let ok = 0;
  if (cand & (INT | BIGINT | NUMERIC | DOUBLE)) {
    if (reInt.test(v)) {
      const digits = v.replace(/^[+-]?0*/, "");
      if (digits.length <= 18 || (digits.length === 19 && BigInt(v) <= 9223372036854775807n && BigInt(v) >= -9223372036854775808n)) {
        const n = Number(v);
        if (n >= -2147483648 && n <= 2147483647) ok |= INT;
        ok |= BIGINT;
      }
      ok |= NUMERIC | DOUBLE;
    } else if (reNum.test(v)) ok |= NUMERIC | DOUBLE;
    else if (reDouble.test(v) && (Number.isFinite(Number(v)) || /n|i/i.test(v))) ok |= DOUBLE;
  }
  if (cand & BOOL && reBool.test(v)) ok |= BOOL;
  if (cand & DATE) { const m = reDate.exec(v); if (m && validDate(+m[1], +m[2], +m[3])) ok |= DATE; }
  if (cand & TSTZ) {
    const m = reTs.exec(v);
    if (m && validDate(+m[1], +m[2], +m[3]) && +m[4] < 24 && +m[5] < 60 && (m[6] === undefined || +m[6] < 60)) ok |= TSTZ;
  }
  if (cand & UUID && v.length === 36 && reUuid.test(v)) ok |= UUID;
  if (cand & JSON_ && (v[0] === "{" || v[0] === "[")) { try { JSON.parse(v); ok |= JSON_; } catch { /* not json */ } }
  return ok & cand;
}

/**
 * Streaming type inference over raw CSV bytes (UTF-8 or any ASCII-compatible
 * encoding). Feed chunks with `push`, then `finish()` gives one type per column.
 */
export class TypeInferrer {
  private cand: number[] = [];
  private seen: boolean[] = [];
  private field: Buffer[] = [];
  private fieldLen = 0;
  private inQ = false;
  private quotePending = false;
  private wasQuoted = false;
  private col = 0;
  private line = 0;
  header: string[] | null = null;
  rows = 0;

  constructor(private d: CsvDialect, private hasHeader: boolean) {}

  push(chunk: Buffer) {
    const { delimiter, quote } = this.d;
    let start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i];
      if (this.inQ) {
        if (this.quotePending) {
          this.quotePending = false;
          if (b === quote) continue; // doubled quote: still inside
          this.inQ = false;          // closing quote: fall through to unquoted handling
        } else {
          if (b === quote) { this.take(chunk, start, i); start = i + 1; this.quotePending = true; }
          continue;
        }
      }
      if (b === delimiter || b === 10) {
        this.take(chunk, start, i);
        start = i + 1;
        this.endField();
        if (b === 10) this.endRow();
      } else if (b === quote && this.fieldLen === 0 && start === i) {
        this.inQ = true; this.wasQuoted = true; start = i + 1;
      }
    }
    this.take(chunk, start, chunk.length);
  }

  private take(chunk: Buffer, s: number, e: number) {
    if (e > s) {
      // Inside a quoted field a doubled quote arrives as two takes around the first quote: one quote kept.
      this.field.push(chunk.subarray(s, e));
      this.fieldLen += e - s;
    }
  }

  private endField() {
    let buf = this.field.length === 1 ? this.field[0] : Buffer.concat(this.field, this.fieldLen);
    if (!this.wasQuoted && buf.length && buf[buf.length - 1] === 13) buf = buf.subarray(0, buf.length - 1);
    const v = buf.toString("utf8");
    const c = this.col++;
    if (this.line === 0 && this.hasHeader) {
      (this.header ??= []).push(v);
    } else if (c < this.cand.length || !this.header) {
      while (this.cand.length <= c) { this.cand.push(ALL); this.seen.push(false); }
      if (!(!this.wasQuoted && v === this.d.nullString)) {
        this.seen[c] = true;
        if (this.cand[c]) this.cand[c] = fits(v, this.cand[c]);
      }
    }
    this.field = []; this.fieldLen = 0; this.wasQuoted = false;
  }

  private endRow() {
    if (this.line === 0 && this.hasHeader) {
      this.cand = this.header!.map(() => ALL);
      this.seen = this.header!.map(() => false);
    } else this.rows++;
    this.line++;
    this.col = 0;
  }

  /** One Postgres type per column (text when nothing narrower fits every value). */
  finish(): string[] {
    if (this.fieldLen > 0 || this.col > 0 || this.quotePending) {
      if (this.quotePending) { this.quotePending = false; this.inQ = false; }
      this.endField();
      this.endRow();
    }
    const n = Math.max(this.cand.length, this.header?.length ?? 0);
    const types: string[] = [];
    for (let c = 0; c < n; c++) {
      const cand = this.cand[c] ?? ALL;
      if (!this.seen[c]) { types.push("text"); continue; }
      const hit = ORDER.find(([bit]) => cand & bit);
      types.push(hit ? hit[1] : "text");
    }
    return types;
  }
}
