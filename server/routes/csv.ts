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

const reDouble = /^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$|^[+-]?(nan|infinity|inf)$/i;

const NUMS = INT | BIGINT | NUMERIC | DOUBLE;
const isDigit = (b: number) => b >= 48 && b <= 57;
const DAYS = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/** Digits of buf[s..s+n) as a number, or -1 if any byte is not a digit. */
function digits(buf: Buffer, s: number, n: number): number {
  let v = 0;
  for (let i = s; i < s + n; i++) { const b = buf[i]; if (b < 48 || b > 57) return -1; v = v * 10 + b - 48; }
  return v;
}

/** YYYY-MM-DD at s: a real calendar date (year 1 or later). */
function dateAt(buf: Buffer, s: number): boolean {
  if (buf[s + 4] !== 45 || buf[s + 7] !== 45) return false;
  const y = digits(buf, s, 4), m = digits(buf, s + 5, 2), d = digits(buf, s + 8, 2);
  if (y < 1 || m < 1 || m > 12 || d < 1 || d > DAYS[m - 1]) return false;
  return !(m === 2 && d === 29 && !(y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0)));
}

/** YYYY-MM-DD[T ]HH:MM[:SS[.f+]][ ][Z|±HH[[:]MM]] */
function timestampAt(buf: Buffer, s: number, e: number): boolean {
  if (e - s < 16 || !dateAt(buf, s)) return false;
  const sep = buf[s + 10];
  if (sep !== 84 && sep !== 116 && sep !== 32) return false;
  const hh = digits(buf, s + 11, 2), mi = digits(buf, s + 14, 2);
  if (buf[s + 13] !== 58 || hh < 0 || hh > 23 || mi < 0 || mi > 59) return false;
  let i = s + 16;
  if (i < e && buf[i] === 58) {
    const ss = digits(buf, i + 1, 2);
    if (i + 3 > e || ss < 0 || ss > 60) return false;
    i += 3;
    if (i < e && buf[i] === 46) { i++; const f = i; while (i < e && isDigit(buf[i])) i++; if (i === f) return false; }
  }
  if (i < e && buf[i] === 32) i++;
  if (i === e) return true;
  if ((buf[i] === 90 || buf[i] === 122) && i + 1 === e) return true;
  if (buf[i] !== 43 && buf[i] !== 45) return false;
  i++;
  if (digits(buf, i, 2) < 0 || i + 2 > e) return false;
  i += 2;
  if (i === e) return true;
  if (buf[i] === 58) i++;
  return i + 2 === e && digits(buf, i, 2) >= 0;
}

const HEX = new Uint8Array(256);
for (const ch of "0123456789abcdefABCDEF") HEX[ch.charCodeAt(0)] = 1;
function uuidAt(buf: Buffer, s: number): boolean {
  for (let i = 0; i < 36; i++) {
    const b = buf[s + i];
    if (i === 8 || i === 13 || i === 18 || i === 23) { if (b !== 45) return false; } else if (!HEX[b]) return false;
  }
  return true;
}

const BOOLS = new Set(["t", "f", "true", "false", "yes", "no"]);

/**
 * Which candidate types a field (bytes s..e of buf) still fits, decided on
 * the bytes: a column that is already text costs nothing, and a string is
 * made only for the rare shapes (exponents, JSON, booleans).
 */
function fitsBytes(buf: Buffer, s: number, e: number, cand: number): number {
  const len = e - s;
  let ok = 0;
  if (cand & NUMS && len > 0) {
    let i = s;
    if (buf[i] === 43 || buf[i] === 45) i++;
    const intStart = i;
    while (i < e && isDigit(buf[i])) i++;
    const nInt = i - intStart;
    if (i === e && nInt > 0) {
      let z = intStart; while (z < e - 1 && buf[z] === 48) z++;
      const sig = e - z;
      if (sig <= 9) ok |= INT | BIGINT;
      else if (sig === 10) { const v = digits(buf, z, 10); ok |= BIGINT | (v <= 2147483647 || (v === 2147483648 && buf[s] === 45) ? INT : 0); }
      else if (sig <= 18) ok |= BIGINT;
      else if (sig === 19) { const v = BigInt(buf.toString("latin1", s, e)); if (v <= 9223372036854775807n && v >= -9223372036854775808n) ok |= BIGINT; }
      ok |= NUMERIC | DOUBLE;
    } else if (i < e && buf[i] === 46) {
      i++;
      const f = i;
      while (i < e && isDigit(buf[i])) i++;
      if (i === e && (nInt > 0 || i > f)) ok |= NUMERIC | DOUBLE;
      else if (cand & DOUBLE && (nInt > 0 || i > f) && (buf[i] === 101 || buf[i] === 69)) {
        const v = buf.toString("latin1", s, e);
        if (reDouble.test(v) && Number.isFinite(Number(v))) ok |= DOUBLE;
      }
    } else if (cand & DOUBLE && (buf[i] === 101 || buf[i] === 69 || nInt === 0)) {
      const v = buf.toString("latin1", s, e);
      if (reDouble.test(v) && (Number.isFinite(Number(v)) || /n|i/i.test(v))) ok |= DOUBLE;
    }
  }
  if (cand & BOOL && len > 0 && len <= 5 && BOOLS.has(buf.toString("latin1", s, e).toLowerCase())) ok |= BOOL;
  if (cand & DATE && len === 10 && dateAt(buf, s)) ok |= DATE;
  if (cand & TSTZ && timestampAt(buf, s, e)) ok |= TSTZ;
  if (cand & UUID && len === 36 && uuidAt(buf, s)) ok |= UUID;
  if (cand & JSON_ && (buf[s] === 123 || buf[s] === 91)) { try { JSON.parse(buf.toString("utf8", s, e)); ok |= JSON_; } catch { /* not json */ } }
  return ok & cand;
}

/**
 * Streaming type inference over raw CSV bytes (UTF-8 or any ASCII-compatible
 * encoding). Feed chunks with `push`, then `finish()` gives one type per column.
 */
export class TypeInferrer {
  private cand: number[] = [];
  private seen: boolean[] = [];
  private parts: Buffer[] = [];   // pieces of a field that spans chunks or holds doubled quotes
  private inQ = false;
  private quotePending = false;
  private wasQuoted = false;
  private col = 0;
  private line = 0;
  header: string[] | null = null;
  rows = 0;

  private nullLen: number;

  constructor(private d: CsvDialect, private hasHeader: boolean) {
    this.nullLen = Buffer.byteLength(d.nullString);
  }

  push(chunk: Buffer) {
    const { delimiter, quote } = this.d;
    let start = 0;
    const n = chunk.length;
    for (let i = 0; i < n; i++) {
      const b = chunk[i];
      if (this.inQ) {
        if (this.quotePending) {
          this.quotePending = false;
          if (b === quote) continue; // doubled quote: the second one starts the next piece
          this.inQ = false;          // closing quote: fall through to unquoted handling
        } else {
          if (b === quote) { if (i > start) this.parts.push(chunk.subarray(start, i)); start = i + 1; this.quotePending = true; }
          continue;
        }
      }
      if (b === delimiter || b === 10) {
        this.endField(chunk, start, i);
        start = i + 1;
        if (b === 10) this.endRow();
      } else if (b === quote && start === i && this.parts.length === 0) {
        this.inQ = true; this.wasQuoted = true; start = i + 1;
      }
    }
    if (n > start) this.parts.push(Buffer.from(chunk.subarray(start, n)));
  }

  private endField(chunk: Buffer, s: number, e: number) {
    let buf = chunk;
    if (this.parts.length) {
      if (e > s) this.parts.push(chunk.subarray(s, e));
      buf = Buffer.concat(this.parts); s = 0; e = buf.length;
      this.parts = [];
    }
    if (!this.wasQuoted && e > s && buf[e - 1] === 13) e--;
    const c = this.col++;
    const quoted = this.wasQuoted;
    this.wasQuoted = false;
    if (this.line === 0 && this.hasHeader) {
      (this.header ??= []).push(buf.toString("utf8", s, e));
      return;
    }
    if (c >= this.cand.length) {
      if (this.header) return; // more fields than the header: COPY reports it
      while (this.cand.length <= c) { this.cand.push(ALL); this.seen.push(false); }
    }
    if (!quoted && e - s === this.nullLen && (this.nullLen === 0 || buf.toString("utf8", s, e) === this.d.nullString)) return;
    this.seen[c] = true;
    const cand = this.cand[c];
    if (cand) this.cand[c] = quoted && e === s ? 0 : fitsBytes(buf, s, e, cand);
  }

  private endRow() {
    if (this.line === 0 && this.hasHeader) {
      this.cand = (this.header ?? []).map(() => ALL);
      this.seen = this.cand.map(() => false);
    } else this.rows++;
    this.line++;
    this.col = 0;
  }

  /** One Postgres type per column (text when nothing narrower fits every value). */
  finish(): string[] {
    if (this.quotePending) { this.quotePending = false; this.inQ = false; }
    if (this.parts.length || this.col > 0) { this.endField(Buffer.alloc(0), 0, 0); this.endRow(); }
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
