/**
 * Realtime test helpers: SQL as a user (committed), emitting events as the
 * owner, the channel GraphQL calls, and a minimal SSE reader over fetch.
 */
import type pg from "pg";
import { runAsUser, type TestDb } from "./db.ts";
import { gql, type TestUser } from "./stack.ts";

/** Run statements as the user's own role, committed (like their psql session would). */
export const asUser = (db: TestDb, user: TestUser, sql: string, params: unknown[] = []): Promise<pg.QueryResult> =>
  runAsUser(db, user, sql, params);

/** Emit `n` events (as the owner would) from a user's job source, `perTx` per transaction. */
export async function emitJobEvents(db: TestDb, userId: string, job: string, from: number, n: number, perTx = 1) {
  for (let i = 0; i < n; i += perTx) {
    const k = Math.min(perTx, n - i);
    await db.admin.query(
      `select app_hidden.emit_event($1, 'job', $2, 'job.run_succeeded', jsonb_build_object('n', g)) from generate_series($3::int, $4::int) g`,
      [userId, job, from + i, from + i + k - 1]);
  }
}

let fixtureDb: TestDb | null = null;
/**
 * Job sources must name a job of the user (app_public.jobs). Tests that feed channels from
 * "jobs" (emitting through emit_event as the owner) register the database here; createChannel
 * then records a placeholder view + job row for each job name first (fixture rows only: no
 * schedule runs).
 */
export function useJobFixtures(db: TestDb) { fixtureDb = db; }

async function ensureJob(db: TestDb, userId: string, job: string) {
  await db.admin.query(
    `with v as (insert into app_public.views (user_id, name, query) values ($1, 'fixture_' || $2, 'select 1')
                on conflict (user_id, name) do update set updated_at = now() returning id)
     insert into app_public.jobs (user_id, view_id, name, schedule, active)
     select $1, v.id, $2, '0 0 1 1 *', false from v
     where not exists (select 1 from app_public.jobs j where j.user_id = $1 and j.name = $2)`, [userId, job]);
}

export async function createChannel(url: string, user: TestUser, name: string, sources: unknown[], extra: Record<string, unknown> = {}) {
  if (fixtureDb) {
    for (const s of sources as Array<{ kind?: string; name?: string }>) {
      if (s?.kind === "job" && typeof s.name === "string" && /^[a-z_][a-z0-9_]{0,40}$/.test(s.name)) await ensureJob(fixtureDb, user.id, s.name);
    }
  }
  const r = await gql(url, `mutation($i: CreateChannelInput!){ createChannel(input: $i) { channel { id name retention { days } retentionCount } } }`,
    { i: { name, sources, ...extra } }, user.token);
  return r;
}

export interface SseEvent { id: string; event: string; data: string }

/**
 * A raw SSE reader (fetch): collects events and comments, reports when the
 * stream ends. No reconnection: tests of closing and headers use it.
 */
export function openSse(url: string, headers: Record<string, string> = {}) {
  const ctl = new AbortController();
  const events: SseEvent[] = [];
  const state = { status: 0, headers: new Headers(), ended: false, body: "", error: null as Error | null };
  const done = (async () => {
    try {
      const r = await fetch(url, { headers: { accept: "text/event-stream", ...headers }, signal: ctl.signal });
      state.status = r.status;
      state.headers = r.headers;
      const reader = r.body!.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const chunk = dec.decode(value, { stream: true });
        state.body += chunk;
        buf += chunk;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const ev: SseEvent = { id: "", event: "message", data: "" };
          let has = false;
          for (const line of block.split("\n")) {
            const m = /^([a-z-]+): ?(.*)$/i.exec(line);
            if (!m) continue;
            if (m[1] === "id") ev.id = m[2];
            else if (m[1] === "event") ev.event = m[2];
            else if (m[1] === "data") { ev.data = m[2]; has = true; }
          }
          if (has) events.push(ev);
        }
      }
    } catch (e) {
      if ((e as Error).name !== "AbortError") state.error = e as Error;
    } finally {
      state.ended = true;
    }
  })();
  return { events, state, done, close: () => ctl.abort() };
}

/** Wait until the forwarder has published a channel's events up to `seq` (its cursor). */
export async function waitPublished(db: TestDb, channel: string, seq: number, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const { rows } = await db.admin.query(
      "select coalesce(f.seq, 0) as seq from app_public.channels c left join app_private.forwarder_cursors f on f.channel_id = c.id where c.name = $1", [channel]);
    if (Number(rows[0]?.seq ?? 0) >= seq) return;
    if (Date.now() > deadline) throw new Error(`forwarder did not publish ${channel} up to ${seq} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
