/**
 * `npm run bench:views`: refreshing a 100k-row aggregate view through
 * refreshView (REFRESH ... CONCURRENTLY + delta against the previous contents
 * + run record + view.refreshed event, one transaction) against a bare
 * `REFRESH MATERIALIZED VIEW CONCURRENTLY` of the same view, side by side,
 * alternating rounds. Before every refresh (untimed) the same small change is
 * made to the base table, so every refresh has a real delta to find.
 * Target: refreshView ≤ 1.5× the bare refresh (median).
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import { ROOT } from "../server/config.ts";
import { withDatabase } from "../server/devstack/database.ts";
import { startServer } from "../server/index.ts";
import { gql, signUp } from "../test/helpers/stack.ts";

const adminUrl = process.env.TDC_BENCH_ADMIN_URL!;
const dbName = process.env.TDC_BENCH_DB!;
const secrets = JSON.parse(readFileSync(process.env.TDC_BENCH_SECRETS!, "utf8"));
const GROUPS = 100_000;
const BASE_ROWS = 500_000;
const CHANGED_PER_ROUND = 50;
const ROUNDS = Number(process.env.ROUNDS || 9);

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const r1 = (x: number) => Math.round(x * 10) / 10;

const admin = new pg.Pool({ connectionString: adminUrl, max: 2 });
const server = await startServer({
  port: 0, authenticatorUrl: withDatabase(adminUrl, dbName, { name: "tdc_authenticator", password: secrets.authenticator }),
  publishUrls: [], gripSigKey: secrets.gripSigKey,
});
const url = `http://127.0.0.1:${server.port}`;
try {
  const user = await signUp(url, "bench_views");
  const userId = user.id;
  console.log(`loading ${BASE_ROWS} rows in ${GROUPS} groups...`);
  await admin.query(`set role ${user.roleName}`);
  await admin.query(`create table ${user.handle}.readings (id bigint primary key, k int not null, v double precision not null)`);
  await admin.query(`insert into ${user.handle}.readings select i, i % ${GROUPS}, random() * 100 from generate_series(1, ${BASE_ROWS}) i`);
  await admin.query(`analyze ${user.handle}.readings`);
  await admin.query("reset role");
  // Someone listens to the view: every refresh appends an event (with its delta) to a channel's log.
  await admin.query(`with c as (insert into app_public.channels (user_id, name) values ($1, 'bench') returning id)
    insert into app_public.channel_sources (channel_id, kind) select id, 'view' from c`, [userId]);

  const t0 = performance.now();
  const cv = await gql(url, `mutation($q:String!){createView(input:{name:"stats", query:$q, uniqueKey:["k"]}){view{rowCount}}}`,
    { q: "select k, count(*) as n, sum(v) as total, avg(v) as mean, max(v) as top from readings group by k" }, user.token);
  if (cv.errors) throw new Error(JSON.stringify(cv.errors));
  console.log(`createView: ${cv.data.createView.view.rowCount} rows in ${r1(performance.now() - t0)} ms`);

  // The bare baseline runs as the user's role, like a psql login would.
  const bare = new pg.Client({ connectionString: adminUrl });
  await bare.connect();
  await bare.query(`set role ${user.roleName}`);
  let round = 0;
  const change = async () => {
    round++;
    await admin.query(`update ${user.handle}.readings set v = v + 1 where id % ${BASE_ROWS / CHANGED_PER_ROUND} = ${round % 97}`);
  };
  const timeBare = async () => { await change(); const s = performance.now(); await bare.query(`refresh materialized view concurrently ${user.handle}.stats`); return performance.now() - s; };
  const timeRefreshView = async () => {
    await change();
    const s = performance.now();
    const r = await gql(url, `mutation{refreshView(input:{name:"stats"}){refresh{status added removed durationMs}}}`, {}, user.token);
    const ms = performance.now() - s;
    if (r.errors || r.data.refreshView.refresh.status !== "succeeded") throw new Error(JSON.stringify(r.errors ?? r.data));
    return { ms, sqlMs: r.data.refreshView.refresh.durationMs, added: Number(r.data.refreshView.refresh.added) };
  };
  // Warm-up (caches, plans), untimed.
  await timeBare(); await timeRefreshView();
  const bareMs: number[] = [], viewMs: number[] = [], sqlMs: number[] = [];
  let added = 0;
  for (let i = 0; i < ROUNDS; i++) {
    // ABBA order, so drift on a shared machine falls on both sides alike.
    let r: Awaited<ReturnType<typeof timeRefreshView>>;
    if (i % 2 === 0) { bareMs.push(await timeBare()); r = await timeRefreshView(); }
    else { r = await timeRefreshView(); bareMs.push(await timeBare()); }
    viewMs.push(r.ms); sqlMs.push(r.sqlMs); added = r.added;
    console.log(`round ${i + 1}: bare ${r1(bareMs.at(-1)!)} ms, refreshView ${r1(r.ms)} ms (in SQL ${r1(r.sqlMs)} ms, delta +${r.added})`);
  }
  await bare.end();
  const ev = (await admin.query(`select e.data->'delta' as d from app_private.events e join app_public.channels c on c.id = e.channel_id
    where c.user_id = $1 order by e.seq desc limit 1`, [userId])).rows[0].d;
  const result = {
    date: new Date().toISOString(),
    viewRows: GROUPS, baseRows: BASE_ROWS, changedBaseRowsPerRound: CHANGED_PER_ROUND, rounds: ROUNDS,
    bareRefreshConcurrentlyMs: { median: r1(median(bareMs)), mean: r1(mean(bareMs)), all: bareMs.map(r1) },
    refreshViewGraphqlMs: { median: r1(median(viewMs)), mean: r1(mean(viewMs)), all: viewMs.map(r1) },
    refreshViewInSqlMs: { median: r1(median(sqlMs)), mean: r1(mean(sqlMs)), all: sqlMs.map(r1) },
    ratioMedian: Math.round((median(viewMs) / median(bareMs)) * 100) / 100,
    ratioMedianInSql: Math.round((median(sqlMs) / median(bareMs)) * 100) / 100,
    target: "refreshView <= 1.5x bare REFRESH MATERIALIZED VIEW CONCURRENTLY",
    lastDelta: { added: ev.added?.length ?? ev.added, removed: ev.removed?.length ?? ev.removed },
    lastAddedRows: added,
  };
  writeFileSync(join(ROOT, "bench/results/views.json"), JSON.stringify(result, null, 2) + "\n");
  writeFileSync(join(ROOT, "bench/results/views.md"), `# bench:views — refreshView vs bare REFRESH ... CONCURRENTLY

${result.date}, ${GROUPS.toLocaleString("en")}-row aggregate view over ${BASE_ROWS.toLocaleString("en")} base rows,
${CHANGED_PER_ROUND} base rows changed before each refresh (untimed), ${ROUNDS} rounds in ABBA order after a warm-up, on a shared 2-core machine.

| | median ms | mean ms |
|---|---|---|
| bare \`REFRESH MATERIALIZED VIEW CONCURRENTLY\` (as the user) | ${result.bareRefreshConcurrentlyMs.median} | ${result.bareRefreshConcurrentlyMs.mean} |
| \`refreshView\` over GraphQL (refresh + delta + run record + event) | ${result.refreshViewGraphqlMs.median} | ${result.refreshViewGraphqlMs.mean} |
| the same, time spent in SQL (run_refresh's own durationMs) | ${result.refreshViewInSqlMs.median} | ${result.refreshViewInSqlMs.mean} |

**Ratio (median): ${result.ratioMedian}×** end to end, ${result.ratioMedianInSql}× in SQL (target ≤ 1.5×).
Last event's delta: ${result.lastDelta.added} rows added, ${result.lastDelta.removed} removed.
`);
  console.log(JSON.stringify(result, null, 2));
} finally {
  await server.close();
  await admin.end();
}
