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
