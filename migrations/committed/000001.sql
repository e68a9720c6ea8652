--! Previous: -
--! Hash: sha1:1af581fdd27f8cfa83cded4f9965326b637e1569

--! split: 1-foundation-accounts.sql
-- Foundation: schemas, roles' grants, settings, health
-- Schemas say who may see what:
--   app_public  exposed through GraphQL (PostGraphile introspects only this one)
--   app_hidden  same grants as app_public, not exposed (helpers the API uses)
--   app_private only reachable through security definer functions
-- pgcrypto (trusted: the database owner may create it) hashes passwords and signs tokens.
create extension if not exists pgcrypto with schema public;
create schema if not exists app_public;
create schema if not exists app_hidden;
create schema if not exists app_private;
comment on schema app_public is 'The TinyDevCRM API: every table and function here is exposed through GraphQL as far as the caller''s role is granted.';
comment on schema app_hidden is 'Helpers the API and the server use; granted like app_public but not exposed through GraphQL.';
comment on schema app_private is 'Secrets and bookkeeping; reachable only through security definer functions.';

-- Every signed-up user's role is a member of tdc_user; app-wide grants go to it.
do $$ begin
  if not exists (select 1 from pg_roles where rolname = 'tdc_user') then
    create role tdc_user nologin noinherit;
  end if;
end $$;
-- The authenticator (NOINHERIT: it gains nothing by this) may act as tdc_user; PostGraphile's
-- RBAC introspection then sees what signed-in users are granted. tdc_user has no identity of
-- its own, so every RLS policy keyed on current_user shows it nothing.
grant tdc_user to tdc_authenticator;
comment on role tdc_user is 'Group role of every TinyDevCRM user role: holds the grants on app_public/app_hidden that every signed-in user needs.';

revoke all on schema app_public, app_hidden, app_private from public;
grant usage on schema app_public, app_hidden to tdc_anonymous, tdc_user, tdc_authenticator;
-- Functions are not executable by PUBLIC unless granted explicitly.
alter default privileges in schema app_public, app_hidden, app_private revoke execute on functions from public;
alter default privileges revoke execute on functions from public;

create table if not exists app_private.settings (
  key text primary key,
  value text not null
);
alter table app_private.settings enable row level security;
alter table app_private.settings force row level security;
drop policy if exists owner_only on app_private.settings;
create policy owner_only on app_private.settings to tdc_owner using (true) with check (true);
comment on table app_private.settings is 'Instance settings and secrets (JWT signing key, role prefix, token lifetimes).';
comment on column app_private.settings.key is 'Setting name.';
comment on column app_private.settings.value is 'Setting value (text).';

insert into app_private.settings (key, value) values
  ('jwt_secret', encode(gen_random_bytes(32), 'hex')),
  ('jwt_ttl', '1 hour'),
  ('session_ttl', '30 days'),
  ('role_prefix', 'tdcu_'),
  ('public_db_host', 'localhost')
on conflict (key) do nothing;

-- Accounts
create table if not exists app_public.users (
  id bigint primary key generated always as identity,
  email text not null,
  handle text not null unique,
  role_name text not null unique,
  created_at timestamptz not null default now()
);
create unique index if not exists users_email_key on app_public.users (lower(email));
alter table app_public.users enable row level security;
alter table app_public.users force row level security;
drop policy if exists select_own on app_public.users;
create policy select_own on app_public.users for select to tdc_user using (role_name = current_user);
drop policy if exists owner_all on app_public.users;
create policy owner_all on app_public.users to tdc_owner using (true) with check (true);
-- Anonymous callers may ask (currentUser is then null): no policy gives them any row.
grant select on app_public.users to tdc_user, tdc_anonymous;
comment on table app_public.users is 'A TinyDevCRM account. Each user is a Postgres role with a schema of their own; you only ever see yourself.';
comment on column app_public.users.id is 'Unique id of the user.';
comment on column app_public.users.email is 'Email address used to sign in (unique, case-insensitive).';
comment on column app_public.users.handle is 'Short name; also the name of the user''s own Postgres schema.';
comment on column app_public.users.role_name is 'The Postgres role that owns the user''s data; psql logins use it.';
comment on column app_public.users.created_at is 'When the account was created.';

create table if not exists app_private.user_secrets (
  user_id bigint primary key references app_public.users on delete cascade,
  password_hash text not null,
  password_changed_at timestamptz not null default now()
);
alter table app_private.user_secrets enable row level security;
alter table app_private.user_secrets force row level security;
drop policy if exists owner_only on app_private.user_secrets;
create policy owner_only on app_private.user_secrets to tdc_owner using (true) with check (true);
comment on table app_private.user_secrets is 'Password hashes (bcrypt), never readable by users.';
comment on column app_private.user_secrets.user_id is 'The user.';
comment on column app_private.user_secrets.password_hash is 'bcrypt hash (pgcrypto crypt/gen_salt(''bf'', 10)).';
comment on column app_private.user_secrets.password_changed_at is 'When the password was last set.';

create table if not exists app_private.sessions (
  id uuid primary key default gen_random_uuid(),
  user_id bigint not null references app_public.users on delete cascade,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null,
  ended_at timestamptz
);
create index if not exists sessions_user_id_idx on app_private.sessions (user_id);
alter table app_private.sessions enable row level security;
alter table app_private.sessions force row level security;
drop policy if exists owner_only on app_private.sessions;
create policy owner_only on app_private.sessions to tdc_owner using (true) with check (true);
comment on table app_private.sessions is 'A sign-in session; every JWT names one. Ending it (logout) invalidates its tokens at once.';
comment on column app_private.sessions.id is 'Session id (the JWT''s sid claim).';
comment on column app_private.sessions.user_id is 'The signed-in user.';
comment on column app_private.sessions.created_at is 'When the user signed in.';
comment on column app_private.sessions.expires_at is 'Hard end of the session; tokens cannot be renewed past it.';
comment on column app_private.sessions.ended_at is 'When the user logged out (null while active).';

create table if not exists app_public.api_tokens (
  id bigint primary key generated always as identity,
  user_id bigint not null references app_public.users on delete cascade,
  name text not null,
  token_prefix text not null,
  token_hash bytea not null unique,
  created_at timestamptz not null default now(),
  expires_at timestamptz,
  revoked_at timestamptz,
  constraint api_tokens_name_length check (length(name) between 1 and 100)
);
create index if not exists api_tokens_user_id_idx on app_public.api_tokens (user_id);
alter table app_public.api_tokens enable row level security;
alter table app_public.api_tokens force row level security;
drop policy if exists select_own on app_public.api_tokens;
create policy select_own on app_public.api_tokens for select to tdc_user
  using (user_id = (select u.id from app_public.users u where u.role_name = current_user));
drop policy if exists owner_all on app_public.api_tokens;
create policy owner_all on app_public.api_tokens to tdc_owner using (true) with check (true);
-- Column-level grant: the hash is never readable, even by its owner.
grant select (id, user_id, name, token_prefix, created_at, expires_at, revoked_at) on app_public.api_tokens to tdc_user;
comment on table app_public.api_tokens is 'Long-lived opaque tokens for scripts and apps. The secret is shown once at creation and stored only as a hash.';
comment on column app_public.api_tokens.id is 'Token id (use it to revoke).';
comment on column app_public.api_tokens.user_id is 'Owner of the token.';
comment on column app_public.api_tokens.name is 'A label you chose.';
comment on column app_public.api_tokens.token_prefix is 'The first characters of the token, to recognise it.';
comment on column app_public.api_tokens.token_hash is 'sha256 of the token (never exposed).';
comment on column app_public.api_tokens.created_at is 'When the token was created.';
comment on column app_public.api_tokens.expires_at is 'When the token stops working (null: never).';
comment on column app_public.api_tokens.revoked_at is 'When the token was revoked (null while valid).';
-- Looking tokens up by hash is the server's job (resolve_token), not an API field.
comment on constraint api_tokens_token_hash_key on app_public.api_tokens is E'@behavior -single';

--! split: 2-events.sql
-- Realtime core: channels, their sources, and the durable event log
-- (non-destructive and idempotent: this file is applied on every start until committed)

create table if not exists app_public.channels (
  id bigint primary key generated always as identity,
  user_id bigint not null references app_public.users on delete cascade,
  name text not null,
  created_at timestamptz not null default now(),
  constraint channels_user_name_key unique (user_id, name),
  constraint channels_name_valid check (name ~ '^[a-z][a-z0-9_-]{0,62}$')
);
create index if not exists channels_user_id_idx on app_public.channels (user_id);
alter table app_public.channels enable row level security;
alter table app_public.channels force row level security;
drop policy if exists select_own on app_public.channels;
create policy select_own on app_public.channels for select to tdc_user
  using (user_id = (select u.id from app_public.users u where u.role_name = current_user));
drop policy if exists owner_all on app_public.channels;
create policy owner_all on app_public.channels to tdc_owner using (true) with check (true);
grant select on app_public.channels to tdc_user;
comment on table app_public.channels is 'A named stream of events you subscribe to (SSE at /channels/:name/events). Its sources say which tables, views, jobs or imports feed it.';
comment on column app_public.channels.id is 'Channel id.';
comment on column app_public.channels.user_id is 'Owner of the channel.';
comment on column app_public.channels.name is 'Channel name (lowercase letters, digits, _ and -), unique per user; used in the stream URL.';
comment on column app_public.channels.created_at is 'When the channel was created.';

create table if not exists app_public.channel_sources (
  id bigint primary key generated always as identity,
  channel_id bigint not null references app_public.channels on delete cascade,
  kind text not null,
  name text,
  events text[],
  constraint channel_sources_kind_valid check (kind in ('table', 'view', 'job', 'imports')),
  constraint channel_sources_key unique nulls not distinct (channel_id, kind, name)
);
create index if not exists channel_sources_channel_id_idx on app_public.channel_sources (channel_id);
alter table app_public.channel_sources enable row level security;
alter table app_public.channel_sources force row level security;
drop policy if exists select_own on app_public.channel_sources;
create policy select_own on app_public.channel_sources for select to tdc_user
  using (exists (select 1 from app_public.channels c join app_public.users u on u.id = c.user_id
                 where c.id = channel_id and u.role_name = current_user));
drop policy if exists owner_all on app_public.channel_sources;
create policy owner_all on app_public.channel_sources to tdc_owner using (true) with check (true);
grant select on app_public.channel_sources to tdc_user;
comment on table app_public.channel_sources is 'What feeds a channel: a table (row events), a view (refresh events), a job (run events) or your imports.';
comment on column app_public.channel_sources.id is 'Source id.';
comment on column app_public.channel_sources.channel_id is 'The channel fed.';
comment on column app_public.channel_sources.kind is 'table, view, job or imports.';
comment on column app_public.channel_sources.name is 'Name of the table, view or job (null for imports).';
comment on column app_public.channel_sources.events is 'Event types to deliver (null: all of this kind).';

-- The per-channel sequence head. Emitting an event takes this row's lock until commit, so
-- sequence numbers of one channel are handed out in commit order and without gaps (a rolled
-- back emit gives its number back). A reader that saw N can never later see a smaller N.
create table if not exists app_private.channel_heads (
  channel_id bigint primary key references app_public.channels on delete cascade,
  last_seq bigint not null default 0
);
alter table app_private.channel_heads enable row level security;
alter table app_private.channel_heads force row level security;
drop policy if exists owner_only on app_private.channel_heads;
create policy owner_only on app_private.channel_heads to tdc_owner using (true) with check (true);
comment on table app_private.channel_heads is 'Last sequence number handed out per channel (commit-ordered, gap-free).';
comment on column app_private.channel_heads.channel_id is 'The channel.';
comment on column app_private.channel_heads.last_seq is 'Highest sequence number used.';

create table if not exists app_private.events (
  channel_id bigint not null references app_public.channels on delete cascade,
  seq bigint not null,
  type text not null,
  data jsonb not null,
  created_at timestamptz not null default now(),
  primary key (channel_id, seq)
);
alter table app_private.events enable row level security;
alter table app_private.events force row level security;
drop policy if exists owner_only on app_private.events;
create policy owner_only on app_private.events to tdc_owner using (true) with check (true);
comment on table app_private.events is 'The durable event log: the source of truth for every stream. NOTIFY only hints that new rows exist.';
comment on column app_private.events.channel_id is 'Channel the event belongs to.';
comment on column app_private.events.seq is 'Per-channel sequence number (the SSE id): gap-free, in commit order.';
comment on column app_private.events.type is 'Event type, e.g. row.inserted, view.refreshed, import.finished.';
comment on column app_private.events.data is 'Event payload (JSON).';
comment on column app_private.events.created_at is 'Commit-time-ish timestamp of the event.';

--! Realtime: retention, forwarder cursors, stream closes (issue 6)
-- Retention per channel: events older than `retention` or beyond the newest
-- `retention_count` are pruned by app_private.prune_events (pg_cron job 'tdc-prune-events').
alter table app_public.channels add column if not exists retention interval not null default '7 days';
alter table app_public.channels add column if not exists retention_count integer not null default 100000;
alter table app_public.channels drop constraint if exists channels_retention_valid;
alter table app_public.channels add constraint channels_retention_valid
  check (retention >= interval '1 minute' and retention <= interval '366 days'
         and retention_count between 1 and 10000000);
comment on column app_public.channels.retention is 'How long events are kept for replay (default 7 days).';
comment on column app_public.channels.retention_count is 'How many of the newest events are kept for replay at most (default 100,000).';

-- Everything up to pruned_through is gone: a subscriber asking to resume from an id
-- below it gets `event: reset` (SSE) or TDC08 (pull) instead of a silent gap.
alter table app_private.channel_heads add column if not exists pruned_through bigint not null default 0;
comment on column app_private.channel_heads.pruned_through is 'Highest sequence number removed by retention (0: none).';

-- The forwarder's progress per channel: advanced only after every Pushpin instance
-- accepted the batch, so a crash re-publishes (Pushpin drops what it already has) and never skips.
create table if not exists app_private.forwarder_cursors (
  channel_id bigint primary key references app_public.channels on delete cascade,
  seq bigint not null default 0,
  updated_at timestamptz not null default now()
);
alter table app_private.forwarder_cursors enable row level security;
alter table app_private.forwarder_cursors force row level security;
drop policy if exists owner_only on app_private.forwarder_cursors;
create policy owner_only on app_private.forwarder_cursors to tdc_owner using (true) with check (true);
comment on table app_private.forwarder_cursors is 'Per channel, the last event sequence number every Pushpin instance accepted from the forwarder.';
comment on column app_private.forwarder_cursors.channel_id is 'The channel.';
comment on column app_private.forwarder_cursors.seq is 'Last sequence number published to all Pushpin instances.';
comment on column app_private.forwarder_cursors.updated_at is 'When the cursor last moved.';

-- Streams to re-check (channel deleted or renamed, session ended, API token revoked): a durable
-- queue the forwarder turns into Pushpin hints on the affected Pushpin channels. A hint
-- makes Pushpin ask the origin again (the stream's Grip-Link) for every held stream there:
-- the origin re-validates token and channel and ends the streams that may no longer be
-- served, while the others continue without a reconnect. A missed NOTIFY delays a
-- re-check by at most one poll but never loses it.
create table if not exists app_private.stream_rechecks (
  id bigint primary key generated always as identity,
  grip_channel text not null,
  reason text not null,
  created_at timestamptz not null default now()
);
alter table app_private.stream_rechecks enable row level security;
alter table app_private.stream_rechecks force row level security;
drop policy if exists owner_only on app_private.stream_rechecks;
create policy owner_only on app_private.stream_rechecks to tdc_owner using (true) with check (true);
comment on table app_private.stream_rechecks is 'Pending re-checks of held SSE streams (deleted channel, ended session, revoked token); the forwarder publishes them to Pushpin as hints and removes them.';
comment on column app_private.stream_rechecks.id is 'Queue order.';
comment on column app_private.stream_rechecks.grip_channel is 'Pushpin channel whose held streams must be re-validated by the origin.';
comment on column app_private.stream_rechecks.reason is 'Why (channel_deleted, channel_renamed, session_ended, token_revoked).';
comment on column app_private.stream_rechecks.created_at is 'When the re-check was requested.';

-- Input and output shapes of the channel API.
do $$ begin
  if to_regtype('app_public.channel_source_spec') is null then
    create type app_public.channel_source_spec as (kind text, name text, events text[]);
  end if;
  if to_regtype('app_public.channel_event') is null then
    create type app_public.channel_event as (seq bigint, type text, data jsonb, created_at timestamptz);
  end if;
end $$;
comment on type app_public.channel_source_spec is 'A channel source: kind (table, view, job or imports), the name of your table/view/job (omit for imports), and optionally which event types to deliver.';
comment on column app_public.channel_source_spec.kind is 'table, view, job or imports.';
comment on column app_public.channel_source_spec.name is 'Name of your table, view or job (omit for imports).';
comment on column app_public.channel_source_spec.events is 'Event types to deliver (omit for all of this kind), e.g. ["row.inserted"].';
comment on type app_public.channel_event is 'One stored event of a channel, as delivered on its SSE stream.';
comment on column app_public.channel_event.seq is 'Sequence number (the SSE id): per channel, gap-free, in commit order.';
comment on column app_public.channel_event.type is 'Event type (the SSE event name).';
comment on column app_public.channel_event.data is 'Event payload (the SSE data).';
comment on column app_public.channel_event.created_at is 'When the event was recorded.';

--! split: 3-tables-imports.sql
-- Tables and imports: metadata of users' tables, the import log, and the API's composite types
-- (non-destructive and idempotent: this file is applied on every start until committed)

-- Composite types of the tables API. `create type` has no `if not exists`: create once, and
-- extend later with `alter type ... add attribute` guarded the same way.
do $$ begin
  if to_regtype('app_public.column_spec') is null then
    create type app_public.column_spec as (
      name text, type text, nullable boolean, "default" text, primary_key boolean, "unique" boolean);
  end if;
  if to_regtype('app_public.column_rename') is null then
    create type app_public.column_rename as (name text, new_name text);
  end if;
  if to_regtype('app_public.table_column') is null then
    create type app_public.table_column as (
      name text, type text, nullable boolean, "default" text, primary_key boolean);
  end if;
  if to_regtype('app_public.table_info') is null then
    create type app_public.table_info as (
      name text, columns app_public.table_column[], approximate_rows bigint, exact_rows bigint,
      size_bytes bigint, created_at timestamptz, updated_at timestamptz);
  end if;
end $$;
comment on type app_public.column_spec is 'A column to create: name, type (from the allowed list), nullable (default true), default (a literal value, or now() / current_date / gen_random_uuid() / identity), primary key, unique.';
comment on column app_public.column_spec.name is 'Column name: lowercase letter or _, then lowercase letters, digits or _ (at most 63 bytes).';
comment on column app_public.column_spec.type is 'Type: text, varchar(n), integer, bigint, smallint, numeric or numeric(p,s), real, double precision, boolean, date, time, timestamp, timestamptz, interval, uuid, json, jsonb, bytea, or an array of one of them (suffix []).';
comment on column app_public.column_spec.nullable is 'Whether the column accepts nulls (default true).';
comment on column app_public.column_spec."default" is 'Default value: a literal (cast to the column type), or one of now(), current_date, gen_random_uuid(), identity (an auto-numbered integer column).';
comment on column app_public.column_spec.primary_key is 'Part of the primary key (default false).';
comment on column app_public.column_spec."unique" is 'Values must be unique (default false).';
comment on type app_public.column_rename is 'A column rename: from name to newName.';
comment on column app_public.column_rename.name is 'Current column name.';
comment on column app_public.column_rename.new_name is 'New column name.';
comment on type app_public.table_column is 'A column of one of your tables.';
comment on column app_public.table_column.name is 'Column name.';
comment on column app_public.table_column.type is 'Postgres type, as format_type prints it.';
comment on column app_public.table_column.nullable is 'Whether nulls are allowed.';
comment on column app_public.table_column."default" is 'Default expression (null: none).';
comment on column app_public.table_column.primary_key is 'Whether the column is part of the primary key.';
comment on type app_public.table_info is 'One of your tables: columns, row counts, size on disk and timestamps.';
comment on column app_public.table_info.name is 'Table name (in your own schema).';
comment on column app_public.table_info.columns is 'Columns in table order.';
comment on column app_public.table_info.approximate_rows is 'Row count estimated from planner statistics (cheap; null until the table was first analyzed).';
comment on column app_public.table_info.exact_rows is 'Exact row count (count(*)), only when requested; otherwise null.';
comment on column app_public.table_info.size_bytes is 'Size on disk including indexes and TOAST.';
comment on column app_public.table_info.created_at is 'When the table was created through the API, or first seen by TinyDevCRM for a table made in psql.';
comment on column app_public.table_info.updated_at is 'Last change through the API (definition or import).';

-- Metadata the catalog does not keep: when a table was created/changed. Keyed by the relation's
-- oid, which survives renames. psql-made tables get a row the first time an API call of their
-- owner syncs them (app_hidden.sync_user_tables).
create table if not exists app_private.user_tables (
  relid oid primary key,
  user_id bigint not null references app_public.users on delete cascade,
  created_via text not null default 'api',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint user_tables_created_via_valid check (created_via in ('api', 'import', 'psql'))
);
create index if not exists user_tables_user_id_idx on app_private.user_tables (user_id);
alter table app_private.user_tables enable row level security;
alter table app_private.user_tables force row level security;
drop policy if exists owner_only on app_private.user_tables;
create policy owner_only on app_private.user_tables to tdc_owner using (true) with check (true);
comment on table app_private.user_tables is 'Creation/update times of users'' tables (the catalog keeps none), keyed by relation oid.';
comment on column app_private.user_tables.relid is 'pg_class oid of the table.';
comment on column app_private.user_tables.user_id is 'Owner of the table.';
comment on column app_private.user_tables.created_via is 'api (defineTable), import (create=true) or psql (found in the user''s schema).';
comment on column app_private.user_tables.created_at is 'Creation time (first-seen time for psql-made tables).';
comment on column app_private.user_tables.updated_at is 'Last definition change or import through the API.';

create table if not exists app_public.imports (
  id bigint primary key generated always as identity,
  user_id bigint not null references app_public.users on delete cascade,
  table_name text not null,
  mode text not null,
  created boolean not null default false,
  status text not null default 'running',
  rows bigint,
  bytes bigint not null default 0,
  duration_ms integer,
  error jsonb,
  options jsonb not null default '{}',
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  constraint imports_mode_valid check (mode in ('append', 'replace')),
  constraint imports_status_valid check (status in ('running', 'succeeded', 'failed'))
);
create index if not exists imports_user_id_idx on app_public.imports (user_id, id desc);
alter table app_public.imports enable row level security;
alter table app_public.imports force row level security;
drop policy if exists select_own on app_public.imports;
create policy select_own on app_public.imports for select to tdc_user
  using (user_id = (select u.id from app_public.users u where u.role_name = current_user));
drop policy if exists owner_all on app_public.imports;
create policy owner_all on app_public.imports to tdc_owner using (true) with check (true);
grant select on app_public.imports to tdc_user;
comment on table app_public.imports is 'Every CSV import you ran (POST /tables/:name/import): status, rows, bytes, duration and the error of a failed one.';
comment on column app_public.imports.id is 'Import id.';
comment on column app_public.imports.user_id is 'Who imported.';
comment on column app_public.imports.table_name is 'Target table.';
comment on column app_public.imports.mode is 'append or replace.';
comment on column app_public.imports.created is 'Whether the import created the table (create=true).';
comment on column app_public.imports.status is 'running, succeeded or failed. Nothing of a failed import is kept.';
comment on column app_public.imports.rows is 'Rows imported (when succeeded).';
comment on column app_public.imports.bytes is 'Bytes of the upload read (compressed size for gzip).';
comment on column app_public.imports.duration_ms is 'Duration in milliseconds.';
comment on column app_public.imports.error is 'Why it failed: {code, message, line, column, value}.';
comment on column app_public.imports.options is 'The options given (header, delimiter, quote, null, encoding).';
comment on column app_public.imports.started_at is 'When the import started.';
comment on column app_public.imports.finished_at is 'When it succeeded or failed.';

--! split: 4-views-jobs.sql
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
