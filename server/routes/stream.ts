/**
 * GET /channels/:name/events — a channel as Server-Sent Events, held open by
 * Pushpin (GRIP). The origin answers one short request: it replays what the
 * client missed (after Last-Event-ID), then tells Pushpin to hold the stream on
 * the channel's Pushpin channel with `prev-id` = the last id it sent, and gives
 * a `Grip-Link` (rel=next) Pushpin calls back with `Grip-Last` whenever it sees
 * a gap (or the stream was idle for a while), so lost publishes are repaired
 * from the event log. Long replays are paged the same way. A stream whose token
 * expires also listens on the token's own Pushpin channel, where a re-check due at
 * the expiry ends it (app_hidden.queue_stream_expiry names that channel and queues
 * the re-check; docs/realtime.md "Ending streams").
 */
import type { Express, Request, Response } from "express";
import { createHash } from "node:crypto";
import type pg from "pg";
import { logger } from "../log.ts";
import { AuthError, resolveToken, tokenFrom, type Auth } from "../auth.ts";
import { parseGripLast, sseEvent, verifyGripSig } from "../grip.ts";

const PAGE_EVENTS = 1000;         // events per first answer; more follow via the next link
const PAGE_BYTES = 512 * 1024;    // and at most about this many bytes
const REPAIR_EVENTS = 20_000;     // events per repair answer (Pushpin's follow-ups), which always holds
const REPAIR_BYTES = 4 * 1024 * 1024;
const LINK_TIMEOUT_S = 60;        // idle streams re-check (auth, channel, gaps) this often
const KEEP_ALIVE_S = 20;          // comment line after this long without data

type Fail = { status: number; code: string; message: string };

function fail(res: Response, f: Fail) {
  res.status(f.status).set("cache-control", "no-store")
    .json({ error: { code: f.code, message: f.message } });
}

/**
 * Pushpin's follow-up requests come to link paths we hand out:
 *  - `/channels/:name/events/next/:tag` — a held stream's next link (gap repair, idle re-check);
 *    its position is the `Grip-Last` Pushpin sends (the prev-id it holds), never the URL;
 *  - `/channels/:name/events/page/:tag/:after` — the next page of a long first replay, which
 *    continues exactly at `after` (no hold yet, so no Grip-Last).
 * Why positions live in the path and nothing per-stream does: Pushpin's handler fetches links
 * through a limiter of 10 actions/s, each action taking up to 100 streams whose link URL is
 * identical, and its proxy merges concurrent link fetches whose *path* and Grip-Last headers
 * are equal (the query is ignored). So one URL per (channel, token) lets 1,000 streams/s
 * re-sync instead of 10, and every merged answer is right for all who share it: their path
 * names the same token (`tag`) and page position, their Grip-Last the same stream position.
 */
type Kind = "client" | "next" | "page";

/** Short tag of a token for link paths: merged answers are only ever shared by one token's streams. */
function tokenTag(token: string): string {
  return createHash("sha256").update(token).digest("hex").slice(0, 16);
}

/** Resume point: null = live only; NaN = unknown (→ reset). */
function requestedAfter(req: Request, kind: Kind, gripChannel: string): number | null {
  const gl = parseGripLast(req.headers["grip-last"]).get(gripChannel);
  let v: string | undefined;
  if (kind === "page") v = String(req.params.after);
  else if (kind === "next") v = gl ?? "";  // a held stream always sends its Grip-Last; without it we cannot know
  else {
    // A client request; Pushpin's retries of it carry the Grip-Last of the stream's last hold.
    v = [gl, req.headers["last-event-id"], req.query.lastEventId].find((c): c is string => typeof c === "string" && c !== "");
    if (v === undefined) return null;
  }
  return /^\d{1,15}$/.test(v) ? Number(v) : NaN;
}

export function installStream(app: Express, pool: pg.Pool, opts: { gripSigKey: string | null }) {
  const handler = (kind: Kind) => async (req: Request, res: Response) => {
    // Only Pushpin may hold streams for us: anything else is refused.
    const sig = req.headers["grip-sig"];
    if (!verifyGripSig(typeof sig === "string" ? sig : undefined, opts.gripSigKey)) {
      return fail(res, { status: 403, code: "TDC09", message: "Streams are served through Pushpin only" });
    }
    // Pushpin's own follow-up requests (gap repair, paging, idle re-check) carry Grip-Last.
    // When the stream may no longer be served, an empty answer without Grip-Hold ends it.
    const isLink = kind !== "client" || req.headers["grip-last"] !== undefined;
    const refuse = (f: Fail) => {
      if (isLink) {
        logger.info({ code: f.code, channel: req.params.name }, "closing stream");
        res.status(200).set("content-type", "text/event-stream").send("");
        return;
      }
      fail(res, f);
    };

    // A resume id from the client must be one of ours: a non-negative integer. Anything else
    // (negative, non-numeric, absurdly long) is a client bug worth a clear 400, not a reset.
    const clientId = [req.headers["last-event-id"], req.query.lastEventId].find((v) => typeof v === "string" && v !== "");
    if (!isLink && clientId !== undefined && !/^\d{1,15}$/.test(clientId as string)) {
      return fail(res, { status: 400, code: "TDC06", message: "Last-Event-ID must be a non-negative integer of at most 15 digits" });
    }

    let token: string | null;
    let tag: string;
    let auth: Auth;
    try {
      token = tokenFrom(req);
      if (!token) return refuse({ status: 401, code: "TDA07", message: "Sign in: send Authorization: Bearer <token> or ?access_token=" });
      // A link path names the token it was made for: any other token is refused.
      tag = tokenTag(token);
      if (kind !== "client" && req.params.tag !== tag) {
        return fail(res, { status: 400, code: "TDC10", message: "This stream link belongs to another token" });
      }
      auth = await resolveToken(pool, token);
    } catch (e) {
      if (e instanceof AuthError) return refuse({ status: 401, code: e.code, message: e.message });
      logger.error({ err: (e as Error).message }, "stream auth failed");
      return fail(res, { status: 503, code: "TDC00", message: "Temporarily unavailable" });
    }

    const name = String(req.params.name);
    const client = await pool.connect().catch(() => null);
    if (!client) return fail(res, { status: 503, code: "TDC00", message: "Temporarily unavailable" });
    let body = "";
    let lastSent: number;
    let more = false;
    let gripChannel: string;
    let channelId: string;
    try {
      // One snapshot for the bounds and the events: what we send and prev-id agree.
      await client.query("begin isolation level repeatable read read only");
      await client.query("select set_config('role', $1, true), set_config('tdc.session_id', $2, true)", [auth.role, auth.sessionId ?? ""]);
      let open;
      try {
        open = (await client.query("select channel_id, grip_channel, head, pruned_through, published from app_hidden.stream_open($1)", [name])).rows[0];
      } catch (e: any) {
        await client.query("rollback");
        if (e.code === "TDC03") return refuse({ status: 404, code: "TDC03", message: `No channel named "${name}"` });
        if (e.code === "TDA07") return refuse({ status: 401, code: "TDA07", message: "You must be signed in" });
        throw e;
      }
      gripChannel = open.grip_channel;
      channelId = open.channel_id;
      const head = Number(open.head);
      const pruned = Number(open.pruned_through);
      // Answers end at what the forwarder has published (an item boundary): the stream is then
      // held exactly where the next item Pushpin receives begins, so it continues live without
      // another repair. Events committed after that arrive as live items.
      const published = Math.min(Number(open.published), head);
      const after = requestedAfter(req, kind, gripChannel);
      if (after === null) {
        lastSent = published; // a new subscriber starts with what comes next
      } else if (Number.isNaN(after) || after < pruned || after > head) {
        // The events after `after` are gone (retention) or never existed here: say so once.
        body += sseEvent(published, "reset", JSON.stringify({ reason: Number.isNaN(after) || after > head ? "unknown_id" : "retention", requested: Number.isNaN(after) ? null : after, oldest: pruned + 1, latest: published }));
        lastSent = published;
      } else {
        lastSent = after;
        const [maxEvents, maxBytes] = isLink ? [REPAIR_EVENTS, REPAIR_BYTES] : [PAGE_EVENTS, PAGE_BYTES];
        const { rows } = await client.query("select seq, type, data from app_hidden.stream_events($1, $2, $3, $4)",
          [open.channel_id, after, published, maxEvents + 1]);
        let bytes = 0;
        for (let i = 0; i < rows.length; i++) {
          if (i >= maxEvents || (bytes >= maxBytes && i > 0)) { more = true; break; }
          const ev = sseEvent(rows[i].seq, rows[i].type, rows[i].data);
          body += ev;
          bytes += ev.length;
          lastSent = Number(rows[i].seq);
        }
      }
      await client.query("commit");
    } catch (e) {
      await client.query("rollback").catch(() => {});
      logger.error({ err: (e as Error).message }, "stream open failed");
      return fail(res, { status: 503, code: "TDC00", message: "Temporarily unavailable" });
    } finally {
      client.release();
    }

    // The stream ends when its token expires, busy channel or not: see app_hidden.queue_stream_expiry.
    // Every holding answer queues it (the first one may be a page of a long replay, which does not
    // hold; a queued expiry is kept once per token channel and time, so repeats cost an index probe).
    const holds = !(more && !isLink);
    let expiryChannel: string | null = null;  // the token's own Pushpin channel, where its expiry re-check comes
    if (holds && auth.expiresAt) {
      try {
        expiryChannel = (await pool.query("select app_hidden.queue_stream_expiry($1, $2, $3) as c", [channelId, tag, auth.expiresAt])).rows[0].c;
      } catch (e) {
        logger.error({ err: (e as Error).message }, "stream expiry not queued");
        return fail(res, { status: 503, code: "TDC00", message: "Temporarily unavailable" });
      }
    }
    const base = `/channels/${encodeURIComponent(name)}/events`;
    const query = `?access_token=${encodeURIComponent(token)}`;
    const link = holds ? `${base}/next/${tag}${query}` : `${base}/page/${tag}/${lastSent}${query}`;
    res.status(200).set({
      "content-type": "text/event-stream",
      "cache-control": "no-cache",
    });
    if (!holds) {
      // Not everything fits one answer: Pushpin fetches the next page at once and appends it.
      res.set("grip-link", `<${link}>; rel=next`);
    } else {
      // A repair answer always holds, even when more remains (non-holding pages chained from a
      // repair lost data under load in our benchmark): the stream then asks again within a
      // second, or at once when the next live event shows the gap.
      res.set({
        "grip-hold": "stream",
        // The events, and for a token that expires its own channel (only ever sent its expiry re-check).
        "grip-channel": `${gripChannel}; prev-id=${lastSent}${expiryChannel ? `, ${expiryChannel}` : ""}`,
        "grip-link": `<${link}>; rel=next; timeout=${more ? 1 : LINK_TIMEOUT_S}`,
        "grip-keep-alive": `:\\n\\n; format=cstring; timeout=${KEEP_ALIVE_S}`,
      });
    }
    logger.debug({ channel: name, kind, gripLast: req.headers["grip-last"] ?? null, after: req.params.after ?? null,
      lastSent, more }, "stream answer");
    // The first answer tells EventSource to reconnect soon after a drop, each stream after its own
    // 1–3 s: when Pushpin restarts, all its clients drop at once, and Pushpin (1.36) answers 502 to
    // part of a burst of ~1,000 connects arriving in the same instant (a 100-request queue toward
    // zurl, compiled in) — and EventSource gives up for good on a non-200 answer.
    res.send((isLink ? "" : `retry: ${1000 + Math.floor(Math.random() * 2000)}\n\n`) + body);
  };
  app.get("/channels/:name/events", handler("client"));
  app.get("/channels/:name/events/next/:tag", handler("next"));
  app.get("/channels/:name/events/page/:tag/:after", handler("page"));
}
