-- Views (materialized views from user SQL), their refresh history, and refresh schedules
-- (non-destructive and idempotent: this file is applied on every start until committed)

insert into app_private.settings (key, value) values
  ('view_delta_limit', '1000'),          -- rows (added + removed) a view.refreshed event lists in full
  ('job_run_retention', '7 days'),       -- how long refresh runs and cron.job_run_details are kept
  ('job_runs_per_job', '1000'),          -- at most this many runs kept per view / cron job
  ('schedule_refresh_timeout', '30 seconds') -- scheduled refreshes running longer are cancelled by maintenance
on conflict (key) do nothing;

create table if not exists app_public.views (
  id bigint primary key generated always as identity,
  user_id bigint not null references app_public.users on delete cascade,
  name text not null,
  query text not null,
  unique_key text[],
  row_count bigint,
  last_refreshed_at timestamptz,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint views_user_name_key unique (user_id, name),
  constraint views_name_valid check (name ~ '^[a-z_][a-z0-9_]{0,62}$')
);
create index if not exists views_user_id_idx on app_public.views (user_id);
alter table app_public.views enable row level security;
alter table app_public.views force row level security;
drop policy if exists select_own on app_public.views;
create policy select_own on app_public.views for select to tdc_user
  using (user_id = (select u.id from app_public.users u where u.role_name = current_user));
drop policy if exists owner_all on app_public.views;
create policy owner_all on app_public.views to tdc_owner using (true) with check (true);
grant select on app_public.views to tdc_user;
comment on table app_public.views is 'A materialized view over your own data, defined by one read-only SQL query, living in your schema and owned by your role. Refresh it now (refreshView) or on a schedule (scheduleRefresh).';
comment on column app_public.views.id is 'View id.';
comment on column app_public.views.user_id is 'Owner of the view.';
comment on column app_public.views.name is 'Name of the materialized view in your schema (lowercase letters, digits and _).';
comment on column app_public.views.query is 'The query as you wrote it.';
comment on column app_public.views.unique_key is 'Columns that identify a row; when set, refreshes run CONCURRENTLY (readers are never blocked).';
comment on column app_public.views.row_count is 'Rows after the last successful refresh.';
comment on column app_public.views.last_refreshed_at is 'When the last successful refresh finished.';
comment on column app_public.views.created_at is 'When the view was created.';
comment on column app_public.views.updated_at is 'When the view was last created, altered or renamed.';

create table if not exists app_public.jobs (
  id bigint primary key generated always as identity,
  user_id bigint not null references app_public.users on delete cascade,
  view_id bigint not null references app_public.views on delete cascade,
  name text not null,
  schedule text not null,
  active boolean not null default true,
  cron_job_id bigint,
  created_at timestamptz not null default now(),
  constraint jobs_view_id_key unique (view_id)
);
create index if not exists jobs_user_id_idx on app_public.jobs (user_id);
alter table app_public.jobs enable row level security;
alter table app_public.jobs force row level security;
drop policy if exists select_own on app_public.jobs;
create policy select_own on app_public.jobs for select to tdc_user
  using (user_id = (select u.id from app_public.users u where u.role_name = current_user));
drop policy if exists owner_all on app_public.jobs;
create policy owner_all on app_public.jobs to tdc_owner using (true) with check (true);
grant select on app_public.jobs to tdc_user;

-- REFRESH ... CONCURRENTLY builds its diff in temporary tables created as the view's owner.
do $$ begin
  execute format('grant temporary on database %I to tdc_user', current_database());
exception when insufficient_privilege then
  -- An existing database (DATABASE_URL) not owned by tdc_owner: its owner must grant it.
  raise warning 'could not grant TEMPORARY on database % to tdc_user: refreshes with a uniqueKey (CONCURRENTLY) will fail until it is granted', current_database();
end $$;
comment on table app_public.jobs is 'A refresh schedule: a pg_cron job (minute granularity, GMT) that refreshes one of your views. Its runs are the view''s refreshes with trigger "schedule".';
comment on column app_public.jobs.id is 'Job id.';
comment on column app_public.jobs.user_id is 'Owner of the job.';
comment on column app_public.jobs.view_id is 'The view this job refreshes.';
comment on column app_public.jobs.name is 'Job name: the name of the view it refreshes (the source name of job events).';
comment on column app_public.jobs.schedule is 'pg_cron schedule: five fields (minute hour day-of-month month day-of-week), GMT.';
comment on column app_public.jobs.active is 'False while paused.';
comment on column app_public.jobs.cron_job_id is 'The pg_cron job (cron.job.jobid); null while paused.';
comment on column app_public.jobs.created_at is 'When the job was scheduled.';
comment on constraint jobs_view_id_fkey on app_public.jobs is E'@foreignSingleFieldName refreshJob\n@fieldName view\nThe view a job refreshes (a view has at most one refresh schedule).';

create table if not exists app_public.view_refreshes (
  id bigint primary key generated always as identity,
  user_id bigint not null references app_public.users on delete cascade,
  view_id bigint not null references app_public.views on delete cascade,
  job_id bigint references app_public.jobs on delete set null,
  view_name text not null,
  trigger text not null,
  status text not null,
  started_at timestamptz not null,
  finished_at timestamptz not null,
  duration_ms double precision not null,
  row_count bigint,
  added bigint,
  removed bigint,
  error text,
  constraint view_refreshes_trigger_valid check (trigger in ('manual', 'schedule')),
  constraint view_refreshes_status_valid check (status in ('succeeded', 'failed'))
);
create index if not exists view_refreshes_user_id_idx on app_public.view_refreshes (user_id);
create index if not exists view_refreshes_view_id_idx on app_public.view_refreshes (view_id, id);
create index if not exists view_refreshes_job_id_idx on app_public.view_refreshes (job_id, id);
create index if not exists view_refreshes_started_at_idx on app_public.view_refreshes (started_at);
alter table app_public.view_refreshes enable row level security;
alter table app_public.view_refreshes force row level security;
drop policy if exists select_own on app_public.view_refreshes;
create policy select_own on app_public.view_refreshes for select to tdc_user
  using (user_id = (select u.id from app_public.users u where u.role_name = current_user));
drop policy if exists owner_all on app_public.view_refreshes;
create policy owner_all on app_public.view_refreshes to tdc_owner using (true) with check (true);
grant select on app_public.view_refreshes to tdc_user;
comment on table app_public.view_refreshes is 'One refresh of a view (manual or scheduled): when, how long, how many rows, what changed, and the error if it failed.';
comment on column app_public.view_refreshes.id is 'Refresh id (refreshId in view.refreshed events).';
comment on column app_public.view_refreshes.user_id is 'Owner of the view.';
comment on column app_public.view_refreshes.view_id is 'The view refreshed.';
comment on column app_public.view_refreshes.job_id is 'The schedule that ran it (null for manual refreshes).';
comment on column app_public.view_refreshes.view_name is 'Name of the view at the time of the refresh.';
comment on column app_public.view_refreshes.trigger is 'manual (refreshView) or schedule (a job).';
comment on column app_public.view_refreshes.status is 'succeeded or failed.';
comment on column app_public.view_refreshes.started_at is 'When the refresh started.';
comment on column app_public.view_refreshes.finished_at is 'When the refresh finished.';
comment on column app_public.view_refreshes.duration_ms is 'Duration, milliseconds.';
comment on column app_public.view_refreshes.row_count is 'Rows in the view after the refresh (null if it failed).';
comment on column app_public.view_refreshes.added is 'Rows added by this refresh (compared with the previous contents).';
comment on column app_public.view_refreshes.removed is 'Rows removed by this refresh.';
comment on column app_public.view_refreshes.error is 'Why it failed (null if it succeeded).';
comment on constraint view_refreshes_job_id_fkey on app_public.view_refreshes is E'@behavior -many\nThe job that ran a refresh (its runs are jobs.runs, newest first).';
comment on constraint view_refreshes_view_id_fkey on app_public.view_refreshes is E'@foreignFieldName refreshes\nThe refreshes of a view.';
