/**
 * Realtime end to end: real Pushpin in front of the server, a real worker
 * (forwarder) publishing to it. Delivery in order, replay (Last-Event-ID,
 * ?lastEventId=, paging), reset after retention, streams closed by dropChannel
 * and logout, Grip-Sig enforcement, cross-tenant isolation (subscribe, NOTIFY
 * spoofing, loopback-only publish port), and two Pushpin instances.
 */
import test from "ava";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createHmac } from "node:crypto";
import { networkInterfaces } from "node:os";
import { createConnection } from "node:net";
import { createTestDb, type TestDb } from "./helpers/db.ts";
import { startStack, startTestPushpin, signUp, gql, type Stack, type TestUser } from "./helpers/stack.ts";
import { eventually } from "./helpers/wait.ts";
import { asUser, createChannel, emitJobEvents, openSse, waitPublished, useJobFixtures } from "./helpers/realtime.ts";
import { startWorker } from "../worker/index.ts";
import type { Pushpin } from "../server/devstack/pushpin.ts";

let db: TestDb;
let stack: Stack;
let pushpin2: Pushpin;
let worker: Awaited<ReturnType<typeof startWorker>>;
let a: TestUser;
let b: TestUser;

const streamUrl = (base: string, channel: string, q = "") => `${base}/channels/${channel}/events${q}`;
const bearer = (u: TestUser) => ({ authorization: `Bearer ${u.token}` });
const ids = (evs: Array<{ id: string }>) => evs.map((e) => Number(e.id));
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

function gripSig(key: string, claims: Record<string, unknown> = {}) {
  const enc = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const input = `${enc({ alg: "HS256", typ: "JWT" })}.${enc({ iss: "pushpin", exp: Math.floor(Date.now() / 1000) + 60, ...claims })}`;
  return `${input}.${createHmac("sha256", key).update(input).digest("base64url")}`;
}

test.before(async () => {
  db = await createTestDb();
  useJobFixtures(db);
  stack = await startStack(db, { pushpin: true });
  pushpin2 = await startTestPushpin(stack.server.port, stack.sigKey);
  worker = await startWorker({ ownerUrl: db.ownerUrl, publishUrls: [stack.pushpin!.publishUrl, pushpin2.publishUrl] });
  a = await signUp(stack.url);
  b = await signUp(stack.url);
});
test.after.always(async () => {
  await worker?.stop();
  await pushpin2?.stop();
  await stack?.stop();
  await db?.drop();
});

test("events reach subscribers on both Pushpin instances in order; replay bytes equal live bytes", async (t) => {
  t.falsy((await createChannel(stack.url, a, "live", [{ kind: "job", name: "j" }])).errors);
  const s1 = openSse(streamUrl(stack.url, "live"), bearer(a));
  const s2 = openSse(streamUrl(pushpin2.clientUrl, "live", `?access_token=${a.token}`));
  await eventually(async () => s1.state.status === 200 && s2.state.status === 200);
  t.regex(s1.state.headers.get("content-type") ?? "", /^text\/event-stream/);
  t.is(s1.state.headers.get("grip-hold"), null, "GRIP instructions stay between Pushpin and the origin");
  await emitJobEvents(db, a.id, "j", 1, 200, 7);
  await eventually(async () => s1.events.length >= 200 && s2.events.length >= 200);
  t.deepEqual(ids(s1.events), range(1, 200));
  t.deepEqual(ids(s2.events), range(1, 200));
  t.is(s1.events[0].event, "job.run_succeeded");
  t.deepEqual(JSON.parse(s1.events[41].data), { n: 42 });
  // A late subscriber replays from the log: the same bytes as the live stream.
  const s3 = openSse(streamUrl(stack.url, "live"), { ...bearer(a), "last-event-id": "0" });
  await eventually(async () => s3.events.length >= 200);
  const live = s1.state.body.slice(s1.state.body.indexOf("id: 1\n"));
  const replay = s3.state.body.slice(s3.state.body.indexOf("id: 1\n"));
  t.is(replay.slice(0, 5000), live.slice(0, 5000));
  for (const s of [s1, s2, s3]) s.close();
});

test("replay after Last-Event-ID (header or ?lastEventId=), paged past 1000 events, then live", async (t) => {
  t.falsy((await createChannel(stack.url, a, "replay", [{ kind: "job", name: "r" }])).errors);
  await emitJobEvents(db, a.id, "r", 1, 2500, 500);
  await waitPublished(db, "replay", 2500);
  const viaHeader = openSse(streamUrl(stack.url, "replay"), { ...bearer(a), "last-event-id": "7" });
  const viaQuery = openSse(streamUrl(stack.url, "replay", `?lastEventId=2400&access_token=${a.token}`));
  await eventually(async () => viaHeader.events.length >= 2493 && viaQuery.events.length >= 100, 20_000);
  await emitJobEvents(db, a.id, "r", 2501, 5, 1);
  await eventually(async () => viaHeader.events.length >= 2498 && viaQuery.events.length >= 105);
  t.deepEqual(ids(viaHeader.events), range(8, 2505));
  t.deepEqual(ids(viaQuery.events), range(2401, 2505));
  // No Last-Event-ID: only what comes next.
  const fresh = openSse(streamUrl(stack.url, "replay"), bearer(a));
  await eventually(async () => fresh.state.status === 200);
  await emitJobEvents(db, a.id, "r", 2506, 1);
  await eventually(async () => fresh.events.length >= 1);
  t.deepEqual(ids(fresh.events), [2506]);
  for (const s of [viaHeader, viaQuery, fresh]) s.close();
});

test("an id older than retention gets one reset event, then the stream continues live", async (t) => {
  t.falsy((await createChannel(stack.url, a, "pruned", [{ kind: "job", name: "p" }], { retentionCount: 3 })).errors);
  await emitJobEvents(db, a.id, "p", 1, 10, 10);
  await waitPublished(db, "pruned", 10);
  await db.admin.query("select app_private.prune_events()");
  const s = openSse(streamUrl(stack.url, "pruned"), { ...bearer(a), "last-event-id": "2" });
  await eventually(async () => s.events.length >= 1);
  t.is(s.events[0].event, "reset");
  t.is(s.events[0].id, "10");
  t.like(JSON.parse(s.events[0].data), { reason: "retention", requested: 2, oldest: 8, latest: 10 });
  await emitJobEvents(db, a.id, "p", 11, 1);
  await eventually(async () => s.events.length >= 2);
  t.deepEqual(s.events.map((e) => [e.id, e.event]), [["10", "reset"], ["11", "job.run_succeeded"]]);
  // Still within retention: a normal replay, no reset.
  const ok = openSse(streamUrl(stack.url, "pruned"), { ...bearer(a), "last-event-id": "8" });
  await eventually(async () => ok.events.length >= 3);
  t.deepEqual(ids(ok.events), [9, 10, 11]);
  s.close();
  ok.close();
});

test("dropChannel closes its open streams; a new request is 404", async (t) => {
  t.falsy((await createChannel(stack.url, a, "doomed", [{ kind: "job", name: "d" }])).errors);
  const s = openSse(streamUrl(stack.url, "doomed"), bearer(a));
  const s2 = openSse(streamUrl(pushpin2.clientUrl, "doomed"), bearer(a));
  await eventually(async () => s.state.status === 200 && s2.state.status === 200);
  await emitJobEvents(db, a.id, "d", 1, 1);
  await eventually(async () => s.events.length === 1 && s2.events.length === 1);
  t.false(s.state.ended);
  const r = await gql(stack.url, `mutation{ dropChannel(input:{name:"doomed"}){ success } }`, {}, a.token);
  t.true(r.data.dropChannel.success);
  await eventually(async () => s.state.ended && s2.state.ended, 5000);
  t.is(s.state.error, null, "ended cleanly");
  const again = await fetch(streamUrl(stack.url, "doomed"), { headers: bearer(a) });
  t.is(again.status, 404);
  t.is((await again.json()).error.code, "TDC03");
});

test("renaming a channel ends its open streams; the new name resumes from Last-Event-ID", async (t) => {
  t.falsy((await createChannel(stack.url, a, "oldname", [{ kind: "job", name: "rn" }])).errors);
  const s = openSse(streamUrl(stack.url, "oldname"), bearer(a));
  await eventually(async () => s.state.status === 200);
  await emitJobEvents(db, a.id, "rn", 1, 2);
  await eventually(async () => s.events.length === 2);
  const r = await gql(stack.url, `mutation{ alterChannel(input:{name:"oldname", newName:"newname"}){ channel { name } } }`, {}, a.token);
  t.is(r.data.alterChannel.channel.name, "newname");
  await eventually(async () => s.state.ended, 5000);
  await emitJobEvents(db, a.id, "rn", 3, 1);
  const again = openSse(streamUrl(stack.url, "newname"), { ...bearer(a), "last-event-id": "2" });
  await eventually(async () => again.events.length >= 1);
  t.deepEqual(ids(again.events), [3]);
  again.close();
});

test("logout ends that session's streams (token refused afterwards); the user's other sessions keep streaming", async (t) => {
  const c = await signUp(stack.url);
  const second = (await gql(stack.url, `mutation($e:String!,$p:String!){authenticate(input:{email:$e,password:$p}){jwtToken}}`,
    { e: c.email, p: c.password })).data.authenticate.jwtToken;
  t.falsy((await createChannel(stack.url, c, "mine", [{ kind: "job", name: "m" }])).errors);
  const s = openSse(streamUrl(stack.url, "mine"), bearer(c));
  const other = openSse(streamUrl(pushpin2.clientUrl, "mine"), { authorization: `Bearer ${second}` });
  await eventually(async () => s.state.status === 200 && other.state.status === 200);
  const out = await gql(stack.url, `mutation{ logout(input:{}){ success } }`, {}, c.token);
  t.true(out.data.logout.success);
  await eventually(async () => s.state.ended, 5000);
  const again = await fetch(streamUrl(stack.url, "mine"), { headers: bearer(c) });
  t.is(again.status, 401);
  t.is((await again.json()).error.code, "TDA05");
  await emitJobEvents(db, c.id, "m", 1, 2);
  await eventually(async () => other.events.length >= 2);
  t.false(other.state.ended);
  t.deepEqual(ids(other.events), [1, 2]);
  // Revoking an API token ends its streams the same way.
  const tok = (await gql(stack.url, `mutation{ createApiToken(input:{name:"t"}){ result { id token } } }`, {}, second)).data.createApiToken.result;
  const viaToken = openSse(streamUrl(stack.url, "mine", `?access_token=${tok.token}`));
  await eventually(async () => viaToken.state.status === 200);
  await gql(stack.url, `mutation($id: BigInt!){ revokeApiToken(input:{id: $id}){ apiToken { id } } }`, { id: tok.id }, second);
  await eventually(async () => viaToken.state.ended, 5000);
  t.false(other.state.ended);
  other.close();
});

test("only Pushpin may open streams: the origin refuses requests without a valid Grip-Sig", async (t) => {
  t.falsy((await createChannel(stack.url, a, "sig", [{ kind: "job", name: "s" }])).errors);
  const origin = `http://127.0.0.1:${stack.server.port}`;
  const direct = await fetch(streamUrl(origin, "sig"), { headers: bearer(a) });
  t.is(direct.status, 403);
  t.is((await direct.json()).error.code, "TDC09");
  const forged = await fetch(streamUrl(origin, "sig"), { headers: { ...bearer(a), "grip-sig": gripSig("changeme") } });
  t.is(forged.status, 403);
  const expired = await fetch(streamUrl(origin, "sig"), { headers: { ...bearer(a), "grip-sig": gripSig(stack.sigKey, { exp: 1 }) } });
  t.is(expired.status, 403);
  const wrongIss = await fetch(streamUrl(origin, "sig"), { headers: { ...bearer(a), "grip-sig": gripSig(stack.sigKey, { iss: "me" }) } });
  t.is(wrongIss.status, 403);
  // Signed like Pushpin signs: the GRIP instructions Pushpin acts on.
  await emitJobEvents(db, a.id, "s", 1, 2);
  await waitPublished(db, "sig", 2);
  const ok = await fetch(streamUrl(origin, "sig"), { headers: { ...bearer(a), "grip-sig": gripSig(stack.sigKey), "last-event-id": "1" } });
  t.is(ok.status, 200);
  t.is(ok.headers.get("grip-hold"), "stream");
  const chan = (await db.admin.query("select app_hidden.grip_channel(id) as g from app_public.channels where name = 'sig'")).rows[0].g;
  // The events with their position, and the token's own channel (its expiry re-check).
  t.regex(ok.headers.get("grip-channel") ?? "", new RegExp(`^${chan}; prev-id=2, ${chan}-t-[0-9a-f]{16}$`));
  const link = ok.headers.get("grip-link") ?? "";
  t.regex(link, /^<\/channels\/sig\/events\/next\/[0-9a-f]{16}\?access_token=[^>]+>; rel=next; timeout=\d+$/);
  t.regex(ok.headers.get("grip-keep-alive") ?? "", /^:\\n\\n; format=cstring; timeout=(1\d|20)$/);
  const text = await ok.text();
  t.regex(text, /^retry: (\d+)\n\n/);
  const retry = Number(/^retry: (\d+)/.exec(text)![1]);
  t.true(retry >= 1000 && retry < 3000, "reconnects spread over 1–3 s");
  t.is(text.slice(text.indexOf("\n\n") + 2), `id: 2\nevent: job.run_succeeded\ndata: {"n":2}\n\n`);
  // Every stream of one token on a channel gets the same link URL, wherever it is: Pushpin
  // fetches links in batches of up to 100 streams per distinct URL (at 10 batches/s).
  const other = await fetch(streamUrl(origin, "sig"), { headers: { ...bearer(a), "grip-sig": gripSig(stack.sigKey) } });
  t.is(other.headers.get("grip-link"), link);
  await other.text();
  // Pushpin's follow-up on that link: the position is its Grip-Last, not the URL.
  const next = link.slice(1, link.indexOf(">"));
  const follow = await fetch(origin + next, { headers: { "grip-sig": gripSig(stack.sigKey), "grip-last": `${chan}; last-id=0` } });
  t.is(follow.status, 200);
  t.is(follow.headers.get("grip-channel"), ok.headers.get("grip-channel"), "a link answer holds the same two channels");
  t.is(await follow.text(), `id: 1\nevent: job.run_succeeded\ndata: {"n":1}\n\nid: 2\nevent: job.run_succeeded\ndata: {"n":2}\n\n`);
  // Without a Grip-Last for this channel the position is unknown: one reset, then live.
  const blind = await fetch(origin + next, { headers: { "grip-sig": gripSig(stack.sigKey) } });
  t.regex(await blind.text(), /^id: 2\nevent: reset\ndata: \{"reason":"unknown_id","requested":null/);
  // A link path names the token it was made for; another token (even the same user's) is refused.
  const otherToken = (await gql(stack.url, `mutation($e:String!,$p:String!){authenticate(input:{email:$e,password:$p}){jwtToken}}`,
    { e: a.email, p: a.password })).data.authenticate.jwtToken;
  const swapped = await fetch(origin + next.replace(/access_token=[^&]+/, `access_token=${otherToken}`),
    { headers: { "grip-sig": gripSig(stack.sigKey), "grip-last": `${chan}; last-id=0` } });
  t.is(swapped.status, 400);
  t.is((await swapped.json()).error.code, "TDC10");
});

test("concurrent long replays (paged) of two users' same-named channels, from different positions, each get exactly their own events", async (t) => {
  // Pushpin merges concurrent link fetches whose path and Grip-Last are equal (the query is
  // ignored): pages of different users, tokens or positions must never share an answer.
  for (const u of [a, b]) {
    t.falsy((await createChannel(stack.url, u, "twin", [{ kind: "job", name: "tw" }])).errors);
    for (let i = 1; i <= 3200; i += 800) {
      await db.admin.query(`select app_hidden.emit_event($1, 'job', 'tw', 'job.run_succeeded', jsonb_build_object('n', g, 'u', $2::text))
        from generate_series($3::int, $4::int) g`, [u.id, u === a ? "a" : "b", i, i + 799]);
    }
  }
  await eventually(async () => Number((await db.admin.query(`select count(*) from app_private.forwarder_cursors f
    join app_public.channels c on c.id = f.channel_id where c.name = 'twin' and f.seq = 3200`)).rows[0].count) === 2, 20_000);
  const starts = [0, 0, 150, 1000, 2001];
  const streams = [a, b].flatMap((u) => starts.map((from, i) => ({ u, from,
    s: openSse(streamUrl(i % 2 ? pushpin2.clientUrl : stack.url, "twin", `?access_token=${u.token}&lastEventId=${from}`)) })));
  await eventually(async () => streams.every((x) => x.s.events.length >= 3200 - x.from), 20_000).catch(() => {});
  for (const { u, from, s } of streams) {
    const who = u === a ? "a" : "b";
    t.deepEqual(s.events.filter((e) => JSON.parse(e.data).u !== who).length, 0, `${who} from ${from}: nothing of the other user`);
    t.deepEqual(ids(s.events), range(from + 1, 3200), `${who} from ${from}`);
    s.close();
  }
});

test("B can neither subscribe to A's channel nor get anything into it (pg_notify spoofing included)", async (t) => {
  t.falsy((await createChannel(stack.url, a, "guarded", [{ kind: "job", name: "g" }])).errors);
  t.falsy((await createChannel(stack.url, b, "bchan", [{ kind: "job", name: "g" }])).errors);
  const asB = await fetch(streamUrl(stack.url, "guarded"), { headers: bearer(b) });
  t.is(asB.status, 404);
  t.is((await asB.json()).error.code, "TDC03");
  const anon = await fetch(streamUrl(stack.url, "guarded"));
  t.is(anon.status, 401);
  const bad = await fetch(streamUrl(stack.url, "guarded", "?access_token=nope"));
  t.is(bad.status, 401);

  const s = openSse(streamUrl(stack.url, "guarded"), bearer(a));
  await eventually(async () => s.state.status === 200);
  const chanId = (await db.admin.query("select id from app_public.channels where name = 'guarded'")).rows[0].id;
  const countSql = "select count(*) from app_private.events e join app_public.channels c on c.id = e.channel_id where c.name in ('guarded', 'bchan')";
  // B's SQL can send NOTIFYs on the hint channel, with any payload: they are only wake-ups.
  await asUser(db, b, "select pg_notify('tdc_events', $1)", [String(chanId)]);
  await asUser(db, b, "select pg_notify('tdc_events', $1)", [JSON.stringify({ channel: chanId, seq: 1, type: "x", data: "forged" })]);
  await emitJobEvents(db, b.id, "g", 1, 3);  // B's own events, same job name: B's channel only
  await emitJobEvents(db, a.id, "g", 1, 1);  // the one real event for A
  await eventually(async () => s.events.length >= 1);
  t.is(Number((await db.admin.query(countSql)).rows[0].count), 4, "A's channel got 1, B's got 3: nothing forged");
  t.deepEqual(s.events.map((e) => [e.id, e.data]), [["1", `{"n":1}`]]);
  s.close();
});

test("publishing is loopback-only: the rendered Pushpin config binds 127.0.0.1 and other addresses refuse", async (t) => {
  const confPath = join(process.env.TDC_TEST_DATA_DIR!, "pushpin");
  const p = stack.pushpin!;
  const port = Number(new URL(p.publishUrl).port);
  const dirs = (await import("node:fs")).readdirSync(confPath).filter((d) => d.startsWith("pushpin-"));
  const conf = dirs.map((d) => readFileSync(join(confPath, d, "pushpin.conf"), "utf8")).find((c) => c.includes(`push_in_http_port=${port}`))!;
  t.truthy(conf);
  t.regex(conf, /^push_in_http_addr=127\.0\.0\.1$/m);
  t.regex(conf, /^push_in_spec=tcp:\/\/127\.0\.0\.1:\d+$/m);
  t.regex(conf, /^push_in_sub_specs=tcp:\/\/127\.0\.0\.1:\d+$/m);
  t.regex(conf, /^command_spec=tcp:\/\/127\.0\.0\.1:\d+$/m);
  t.notRegex(conf, /sig_key=changeme/);
  const external = Object.values(networkInterfaces()).flat().find((i) => i && i.family === "IPv4" && !i.internal);
  if (!external) return t.log("no non-loopback IPv4 address on this machine; config check only");
  const reached = await new Promise<boolean>((res) => {
    const sock = createConnection({ host: external.address, port }, () => { sock.destroy(); res(true); });
    sock.on("error", () => res(false));
  });
  t.false(reached, `publish port ${port} must not accept connections on ${external.address}`);
});

test("a 2,503-event gap is repaired from the log (Pushpin fetches the Grip-Link) in order, without duplicates", async (t) => {
  t.falsy((await createChannel(stack.url, a, "gappy", [{ kind: "job", name: "x" }])).errors);
  const s = openSse(streamUrl(stack.url, "gappy"), bearer(a));
  await eventually(async () => s.state.status === 200);
  // Simulate lost publishes: write events 1..2503 to the log, but publish only the last one
  // directly (the forwarder would publish them all; hold it off by moving its cursor first).
  const chanId = (await db.admin.query("select id from app_public.channels where name = 'gappy'")).rows[0].id;
  await db.admin.query("insert into app_private.forwarder_cursors (channel_id, seq) values ($1, 2503)", [chanId]);
  await emitJobEvents(db, a.id, "x", 1, 2503, 500);
  const dbName = (await db.admin.query("select current_database() as d")).rows[0].d;
  const r = await fetch(stack.pushpin!.publishUrl, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ items: [{ channel: `tdc-${dbName}-${chanId}`, id: "2503", "prev-id": "2502",
      formats: { "http-stream": { content: `id: 2503\nevent: job.run_succeeded\ndata: {"n":2503}\n\n` } } }] }),
  });
  t.is(r.status, 200);
  await eventually(async () => s.events.length >= 2503, 30_000);
  // Let the forwarder publish from there on: live events continue the same stream.
  await db.admin.query("update app_private.forwarder_cursors set seq = 2503 where channel_id = $1", [chanId]);
  await emitJobEvents(db, a.id, "x", 2504, 2);
  await eventually(async () => s.events.length >= 2505);
  t.deepEqual(ids(s.events), range(1, 2505));
  s.close();
});
