/**
 * Refresh schedules under a real pg_cron (this is the one test file that
 * uses the cron database): a job really fires and leaves a run record and
 * events; schedules are validated (minute granularity, GMT); next run times;
 * pause/resume/unschedule; the job's command on failure; maintenance pruning
 * and cancelling of overrunning scheduled refreshes; cron.* stays out of
 * users' reach.
 */
import test from "ava";
import pg from "pg";
import { CronExpressionParser } from "cron-parser";
import { createTestDb, runAsUser, type TestDb } from "./helpers/db.ts";
import { startStack, gql, errCode, signUp, type Stack, type TestUser } from "./helpers/stack.ts";
import { eventually } from "./helpers/wait.ts";

let db: TestDb;
let stack: Stack;
let alice: TestUser;
let bob: TestUser;
let owner: pg.Pool;
let firingJobId: string;
let failingJobId: string;

const asUser = (user: TestUser, sql: string) => runAsUser(db, user, sql);
const JOB_FIELDS = "id name schedule active nextRunAt view{name}";
const schedule = (user: TestUser, view: string, s: string) =>
  gql(stack.url, `mutation($v:String!,$s:String!){scheduleRefresh(input:{view:$v, schedule:$s}){job{${JOB_FIELDS}}}}`, { v: view, s }, user.token);
const createView = (user: TestUser, name: string, query: string, extra: Record<string, unknown> = {}) =>
  gql(stack.url, `mutation($i:CreateViewInput!){createView(input:$i){view{id name}}}`, { i: { name, query, ...extra } }, user.token);
const cronJobs = async () => (await db.admin.query("select jobid, jobname, schedule, command, username, active from cron.job order by jobid")).rows;
const events = async (type: string) => (await db.admin.query(`select e.data from app_private.events e join app_public.channels c on c.id = e.channel_id
  where c.user_id = $1 and e.type = $2 order by e.seq`, [alice.id, type])).rows.map((r) => r.data);

test.before(async () => {
  db = await createTestDb({ cron: true });
  owner = new pg.Pool({ connectionString: db.ownerUrl, max: 3 });
  // The template was bootstrapped without pg_cron; the bootstrap schedules maintenance when it is there.
  await owner.query("select app_private.ensure_maintenance_job()");
  stack = await startStack(db);
  alice = await signUp(stack.url);
  bob = await signUp(stack.url);
  await asUser(alice, `create table sales (id int primary key, region text not null, amount numeric not null, divisor int not null default 1);
    insert into sales select i, 'r' || (i % 3), i, 1 from generate_series(1, 30) i;`);
  await db.admin.query(`with c as (insert into app_public.channels (user_id, name) values ($1, 'ops') returning id)
    insert into app_public.channel_sources (channel_id, kind) select id, k from c, unnest(array['view', 'job']) k`, [alice.id]);
  // Start the clock for the one real firing early: pg_cron runs it at the next minute boundary.
  const r = await createView(alice, "every_minute", "select region, sum(amount) as total from sales group by region",
    { uniqueKey: ["region"], refreshSchedule: "* * * * *" });
  if (r.errors) throw new Error(JSON.stringify(r.errors));
  firingJobId = (await db.admin.query("select id from app_public.jobs where name = 'every_minute'")).rows[0].id;
  // A second job that will fail at every run (division by zero once the data changes).
  await asUser(alice, `create table gauges (id int primary key, amount numeric not null, divisor int not null);
    insert into gauges values (1, 10, 1), (2, 20, 2);`);
  const f = await createView(alice, "always_failing", "select sum(amount / divisor) as q from gauges", { refreshSchedule: "* * * * *" });
  if (f.errors) throw new Error(JSON.stringify(f.errors));
  await asUser(alice, "update gauges set divisor = 0 where id = 1");
  failingJobId = (await db.admin.query("select id from app_public.jobs where name = 'always_failing'")).rows[0].id;
});
test.after.always(async () => {
  await owner?.end();
  await stack?.stop();
  await db?.drop();
});

test.serial("the maintenance job is scheduled when pg_cron is present (idempotently)", async (t) => {
  await owner.query("select app_private.ensure_maintenance_job()");
  const m = (await cronJobs()).filter((j) => j.jobname === "tdc-maintenance");
  t.is(m.length, 1);
  t.like(m[0], { schedule: "* * * * *", command: "select app_private.maintenance()", username: "tdc_owner", active: true });
});

test.serial("scheduleRefresh: a pg_cron job of the owner role calling one function; next run time computed", async (t) => {
  t.falsy((await createView(alice, "hourly", "select count(*) as n from sales")).errors);
  const r = await schedule(alice, "hourly", "*/5 9-17 * * mon-fri");
  t.falsy(r.errors, JSON.stringify(r.errors));
  const job = r.data.scheduleRefresh.job;
  t.like(job, { name: "hourly", schedule: "*/5 9-17 * * mon-fri", active: true, view: { name: "hourly" } });
  const expected = CronExpressionParser.parse("*/5 9-17 * * mon-fri", { currentDate: new Date(), tz: "UTC" }).next().toISOString()!;
  t.is(new Date(job.nextRunAt).toISOString(), expected);
  const viewId = (await db.admin.query("select id from app_public.views where name = 'hourly'")).rows[0].id;
  const cj = (await cronJobs()).find((j) => j.jobname === `tdc_view_${viewId}`);
  t.like(cj, { schedule: "*/5 9-17 * * mon-fri", command: `select app_private.run_refresh(${viewId}, 'schedule')`, username: "tdc_owner", active: true });
  // Scheduling again replaces the schedule (one job per view).
  const again = await schedule(alice, "hourly", "@daily");
  t.like(again.data.scheduleRefresh.job, { id: job.id, schedule: "0 0 * * *" });
  t.is((await cronJobs()).filter((j) => j.jobname === `tdc_view_${viewId}`)[0].schedule, "0 0 * * *");
});

test.serial("invalid schedules are refused with TDJ02 saying why; seconds are not supported by this pg_cron", async (t) => {
  const before = [await cronJobs(), (await db.admin.query("select * from app_public.jobs order by id")).rows];
  const secs = await schedule(alice, "hourly", "30 seconds");
  t.is(errCode(secs), "TDJ02");
  t.regex(secs.errors![0].message, /minute granularity/);
  t.regex(secs.errors![0].message, /GMT/);
  for (const s of ["*/10 * * * * *", "61 * * * *", "* 24 * * *", "* * 0 * *", "every minute", "", "5-1 * * * *", "*/0 * * * *"]) {
    t.is(errCode(await schedule(alice, "hourly", s)), "TDJ02", s);
  }
  const cv = await createView(alice, "never_made", "select 1 as a", { refreshSchedule: "10 seconds" });
  t.is(errCode(cv), "TDJ02");
  t.deepEqual([await cronJobs(), (await db.admin.query("select * from app_public.jobs order by id")).rows], before);
  t.is((await db.admin.query(`select to_regclass('${alice.handle}.never_made') as r`)).rows[0].r, null);
});

test.serial("next run times follow cron's rules (GMT)", async (t) => {
  const next = async (s: string, after: string) =>
    (await db.admin.query("select app_hidden.cron_next_run($1, $2)::text as t", [s, after])).rows[0].t;
  const cases: Array<[string, string]> = [
    ["* * * * *", "2026-03-01T10:15:30Z"], ["0 0 29 2 *", "2026-03-01T00:00:00Z"], ["15 14 1 * *", "2026-12-31T23:59:00Z"],
    ["0 12 * * 1", "2026-12-04T16:00:00Z"], ["0 0 13 * 5", "2026-01-01T00:00:00Z"], ["*/7 */3 * jan,jul sun", "2026-02-01T00:00:00Z"],
  ];
  for (const [s, after] of cases) {
    const expected = CronExpressionParser.parse(s, { currentDate: new Date(after), tz: "UTC" }).next().toDate();
    t.is(new Date((await next(s, after)).replace(" ", "T").replace(/\+00$/, "Z")).getTime(), expected.getTime(), `${s} after ${after}`);
  }
  t.is(await next("0 0 30 2 *", "2026-01-01T00:00:00Z"), null);
});

test.serial("pauseJob removes the pg_cron job and clears nextRunAt; resumeJob brings it back", async (t) => {
  const job = (await db.admin.query("select id, view_id from app_public.jobs where name = 'hourly'")).rows[0];
  const p = await gql(stack.url, `mutation($j:BigInt!){pauseJob(input:{job:$j}){job{${JOB_FIELDS}}}}`, { j: job.id }, alice.token);
  t.like(p.data.pauseJob.job, { active: false, nextRunAt: null });
  t.false((await cronJobs()).some((j) => j.jobname === `tdc_view_${job.view_id}`));
  const r = await gql(stack.url, `mutation($j:BigInt!){resumeJob(input:{job:$j}){job{${JOB_FIELDS}}}}`, { j: job.id }, alice.token);
  t.like(r.data.resumeJob.job, { active: true, schedule: "0 0 * * *" });
  t.truthy(r.data.resumeJob.job.nextRunAt);
  t.true((await cronJobs()).some((j) => j.jobname === `tdc_view_${job.view_id}` && j.schedule === "0 0 * * *"));
  // Bob cannot touch Alice's job, nor see it.
  t.is(errCode(await gql(stack.url, `mutation($j:BigInt!){pauseJob(input:{job:$j}){job{id}}}`, { j: job.id }, bob.token)), "TDJ03");
  t.is(errCode(await gql(stack.url, `mutation($j:BigInt!){unscheduleRefresh(input:{job:$j}){job{id}}}`, { j: job.id }, bob.token)), "TDJ03");
  t.deepEqual((await gql(stack.url, `{jobs{nodes{id}}}`, {}, bob.token)).data.jobs.nodes, []);
});

test.serial("the job's command, called directly: a failed run is recorded with job.run_failed and view.refresh_failed", async (t) => {
  t.falsy((await createView(alice, "ratios", "select id, amount / divisor as ratio from sales where id <= 5", { refreshSchedule: "0 3 * * *" })).errors);
  const { rows: [cj] } = await db.admin.query("select c.command, j.id from cron.job c join app_public.jobs j on c.jobid = j.cron_job_id where j.name = 'ratios'");
  await asUser(alice, "update sales set divisor = 0 where id = 3");
  await owner.query(cj.command); // exactly what pg_cron runs
  await asUser(alice, "update sales set divisor = 1 where id = 3");
  const failed = (await events("job.run_failed")).at(-1);
  t.like(failed, { job: "ratios", jobId: Number(cj.id), view: "ratios", status: "failed" });
  t.regex(failed.error, /division by zero/);
  t.like((await events("view.refresh_failed")).at(-1), { view: "ratios", trigger: "schedule", refreshId: failed.refreshId });
  await owner.query(cj.command);
  const ok = (await events("job.run_succeeded")).filter((e) => e.job === "ratios").at(-1);
  t.like(ok, { status: "succeeded", rowCount: 5 });
  const runs = await gql(stack.url, `{jobs{nodes{name runs(first:5){nodes{id status trigger error}}}}}`, {}, alice.token);
  t.deepEqual(runs.data.jobs.nodes.find((j: any) => j.name === "ratios").runs.nodes.map((r: any) => [r.status, r.trigger]), [["succeeded", "schedule"], ["failed", "schedule"]]);
});

test.serial("alterView keeps the schedule; dropView removes the pg_cron job; unscheduleRefresh too", async (t) => {
  const job = (await db.admin.query("select id, view_id, cron_job_id from app_public.jobs where name = 'ratios'")).rows[0];
  const a = await gql(stack.url, `mutation{alterView(input:{name:"ratios", query:"select id from sales where id <= 2"}){view{name refreshJob{id schedule}}}}`, {}, alice.token);
  t.deepEqual(a.data.alterView.view.refreshJob, { id: job.id, schedule: "0 3 * * *" });
  t.true((await cronJobs()).some((j) => Number(j.jobid) === Number(job.cron_job_id)));
  await gql(stack.url, `mutation{dropView(input:{name:"ratios"}){view{name}}}`, {}, alice.token);
  t.false((await cronJobs()).some((j) => Number(j.jobid) === Number(job.cron_job_id)));
  t.is((await db.admin.query("select count(*)::int as n from app_public.jobs where id = $1", [job.id])).rows[0].n, 0);
  const h = (await db.admin.query("select id, cron_job_id from app_public.jobs where name = 'hourly'")).rows[0];
  const u = await gql(stack.url, `mutation($j:BigInt!){unscheduleRefresh(input:{job:$j}){job{id}}}`, { j: h.id }, alice.token);
  t.is(u.data.unscheduleRefresh.job.id, h.id);
  t.false((await cronJobs()).some((j) => Number(j.jobid) === Number(h.cron_job_id)));
  t.is(errCode(await gql(stack.url, `mutation($j:BigInt!){unscheduleRefresh(input:{job:$j}){job{id}}}`, { j: h.id }, alice.token)), "TDJ03");
});

test.serial("maintenance prunes old runs and cron.job_run_details, and keeps at most N per job", async (t) => {
  const v = (await db.admin.query("select id, name from app_public.views where name = 'hourly'")).rows[0];
  await db.admin.query(`insert into app_public.view_refreshes (user_id, view_id, view_name, trigger, status, started_at, finished_at, duration_ms)
    select $1, $2, $3, 'manual', 'succeeded', now() - make_interval(days => d), now() - make_interval(days => d), 1
    from generate_series(1, 10) d`, [alice.id, v.id, v.name]);
  await db.admin.query(`insert into cron.job_run_details (jobid, runid, job_pid, database, username, command, status, return_message, start_time, end_time)
    select 999999, nextval('cron.runid_seq'), 0, current_database(), 'tdc_owner', 'select 1', 'succeeded', 'SELECT 1', now() - make_interval(days => d), now() - make_interval(days => d)
    from generate_series(1, 10) d`);
  await db.admin.query("update app_private.settings set value = '3' where key = 'job_runs_per_job'");
  try {
    const { rows: [m] } = await owner.query("select app_private.maintenance() as m");
    // (The every-minute tdc-maintenance job may have pruned some of them first: check the end state.)
    t.deepEqual(Object.keys(m.m).sort(), ["cancelled", "cronRunsPruned", "runsPruned", "stalledImportsFailed"]);
    const left = (await db.admin.query("select started_at > now() - interval '7 days' as recent from app_public.view_refreshes where view_id = $1", [v.id])).rows;
    t.true(left.length <= 3 && left.every((r) => r.recent));
    const cronLeft = (await db.admin.query("select count(*)::int as n, bool_and(end_time > now() - interval '7 days') as recent from cron.job_run_details where jobid = 999999")).rows[0];
    t.true(cronLeft.n <= 3 && cronLeft.recent !== false, JSON.stringify(cronLeft));
    t.is((await db.admin.query("select count(*)::int as n from cron.job_run_details where jobid = 999999 and end_time < now() - interval '7 days'")).rows[0].n, 0);
  } finally {
    await db.admin.query("update app_private.settings set value = '1000' where key = 'job_runs_per_job'");
  }
});

test.serial("maintenance cancels a scheduled refresh that overruns (pg_cron workers have no statement_timeout): recorded as failed", async (t) => {
  t.falsy((await createView(alice, "slow", "select 1 as a")).errors);
  const viewId = (await db.admin.query("select id from app_public.views where name = 'slow'")).rows[0].id;
  // Populated while fast; then the function behind it becomes slow.
  await asUser(alice, `create function slow_fn() returns int language sql as 'select 1';
    drop materialized view slow; create materialized view slow as select slow_fn() as a;
    create or replace function slow_fn() returns int language sql as 'select 1 from pg_sleep(30)';`);
  await db.admin.query("update app_private.settings set value = '1 second' where key = 'schedule_refresh_timeout'");
  try {
    const started = Date.now();
    const running = owner.query(`select app_private.run_refresh(${viewId}, 'schedule')`); // as pg_cron would
    await eventually(async () => (await owner.query("select app_private.maintenance() as m")).rows[0].m.cancelled >= 1, 15_000, 300)
      .catch(() => {}); // the every-minute maintenance job may have cancelled it first
    await running;
    t.true(Date.now() - started < 20_000, "cancelled well before the 30 s sleep ended");
    const run = (await db.admin.query("select status, error from app_public.view_refreshes where view_id = $1 order by id desc limit 1", [viewId])).rows[0];
    t.is(run.status, "failed");
    t.regex(run.error, /time limit|cancel/i);
    // (The always-failing job's minutely runs emit view.refresh_failed too: look for this view's.)
    t.like((await events("view.refresh_failed")).filter((e) => e.view === "slow").at(-1), { view: "slow", trigger: "schedule" });
  } finally {
    await db.admin.query("update app_private.settings set value = '30 seconds' where key = 'schedule_refresh_timeout'");
  }
});

test.serial("cron.* is out of users' reach, through views and queries", async (t) => {
  const before = await cronJobs();
  for (const q of ["select * from cron.job", "select command from cron.job_run_details",
    "select cron.schedule('x', '* * * * *', 'drop table sales')", "select cron.unschedule(1)"]) {
    t.is(errCode(await createView(alice, "cronpeek", q)), "42501", q);
    t.is(errCode(await gql(stack.url, `query($q:String!){runQuery(query:$q){rows}}`, { q }, alice.token)), "42501", q);
  }
  t.deepEqual(await cronJobs(), before);
});

test.serial("a scheduled job really fires under pg_cron: a run record, view.refreshed and job.run_succeeded", async (t) => {
  // Scheduled in before(); pg_cron starts it at the next minute boundary (≤ 60 s).
  const run = await eventually(async () => (await db.admin.query(
    "select id, status, trigger, job_id from app_public.view_refreshes where job_id = $1 order by id limit 1", [firingJobId])).rows[0], 75_000, 500);
  t.like(run, { status: "succeeded", trigger: "schedule" });
  const ev = (await events("view.refreshed")).find((e) => e.refreshId === Number(run.id));
  t.like(ev, { view: "every_minute", trigger: "schedule", rowCount: 3 });
  const jev = (await events("job.run_succeeded")).find((e) => e.refreshId === Number(run.id));
  t.like(jev, { job: "every_minute", jobId: Number(firingJobId), status: "succeeded" });
  const details = await eventually(async () => (await db.admin.query(
    "select d.status from cron.job_run_details d join app_public.jobs j on j.cron_job_id = d.jobid where j.id = $1 and d.status = 'succeeded'", [firingJobId])).rows[0], 5_000);
  t.is(details.status, "succeeded");
  const listed = await gql(stack.url, `{jobs{nodes{id name nextRunAt runs(first:1){nodes{id status trigger}}}}}`, {}, alice.token);
  const j = listed.data.jobs.nodes.find((x: any) => x.id === firingJobId);
  t.deepEqual(j.runs.nodes[0], { id: run.id, status: "succeeded", trigger: "schedule" });
  t.true(new Date(j.nextRunAt).getTime() > Date.now() - 1000);
});

test.serial("a pg_cron job failing repeatedly: every run recorded as failed with its events, and the schedule keeps going", async (t) => {
  // Two consecutive scheduled runs (two minute boundaries after before()).
  const runs = await eventually(async () => {
    const { rows } = await db.admin.query(
      "select id, status, trigger, error from app_public.view_refreshes where job_id = $1 order by id", [failingJobId]);
    return rows.length >= 2 && rows;
  }, 150_000, 1000);
  for (const run of runs.slice(0, 2)) {
    t.like(run, { status: "failed", trigger: "schedule" });
    t.regex(String(run.error), /division by zero/);
    t.truthy((await events("view.refresh_failed")).find((e) => e.refreshId === Number(run.id)), "view.refresh_failed emitted");
    t.truthy((await events("job.run_failed")).find((e) => e.refreshId === Number(run.id)), "job.run_failed emitted");
  }
  const { rows } = await db.admin.query("select j.active, c.active as cron_active from app_public.jobs j join cron.job c on c.jobid = j.cron_job_id where j.id = $1", [failingJobId]);
  t.deepEqual(rows[0], { active: true, cron_active: true }, "still scheduled after repeated failures");
});
