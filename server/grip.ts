/**
 * GRIP helpers. Pushpin signs every request it proxies with a `Grip-Sig` JWT
 * (HS256, iss "pushpin", exp) using the per-installation sig_key; a request
 * without a valid one did not come through Pushpin and must not get a stream.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

function b64urlDecode(s: string): Buffer {
  return Buffer.from(s.replace(/-/g, "+").replace(/_/g, "/"), "base64");
}

/** True when `sig` is a Grip-Sig JWT signed with `key`, issued by pushpin and not expired. */
export function verifyGripSig(sig: string | undefined, key: string | null | undefined, nowMs = Date.now()): boolean {
  if (!sig || !key || sig.length > 2048) return false;
  const parts = sig.split(".");
  if (parts.length !== 3) return false;
  try {
    const header = JSON.parse(b64urlDecode(parts[0]).toString("utf8"));
    if (header?.alg !== "HS256") return false;
    const expected = createHmac("sha256", Buffer.from(key, "utf8")).update(`${parts[0]}.${parts[1]}`).digest();
    const given = b64urlDecode(parts[2]);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return false;
    const claims = JSON.parse(b64urlDecode(parts[1]).toString("utf8"));
    if (claims?.iss !== "pushpin") return false;
    if (typeof claims.exp !== "number" || claims.exp * 1000 <= nowMs) return false;
    return true;
  } catch {
    return false;
  }
}

/** `Grip-Last: <channel>; last-id=<id>[, …]` → Map channel → id. */
export function parseGripLast(header: string | string[] | undefined): Map<string, string> {
  const out = new Map<string, string>();
  const values = Array.isArray(header) ? header : header ? [header] : [];
  for (const v of values) {
    for (const part of v.split(",")) {
      const m = /^\s*([^;\s]+)\s*;\s*last-id=("?)([^";]*)\2\s*$/.exec(part);
      if (m) out.set(m[1], m[3]);
    }
  }
  return out;
}

/**
 * One SSE event as Pushpin publishes it and the origin replays it: identical bytes on both
 * paths. `jsonText` is the event's jsonb as Postgres prints it; it goes out as compact JSON
 * (Postgres puts a space after every ':' and ',').
 */
export function sseEvent(id: string | number, type: string, jsonText: string): string {
  return `id: ${id}\nevent: ${type}\ndata: ${JSON.stringify(JSON.parse(jsonText))}\n\n`;
}
