--! Previous: sha1:1af581fdd27f8cfa83cded4f9965326b637e1569
--! Hash: sha1:162ffbb37d5e6814993f377ea387813abc21010a

--! split: 1-current.sql
-- A running import reports progress every second (app_hidden.import_progress). One that stays
-- silent lost its server (killed or crashed: its data transaction rolled back) and is marked
-- failed by maintenance (app_private.fail_stalled_imports), instead of staying "running".
alter table app_public.imports add column if not exists updated_at timestamptz not null default now();
comment on column app_public.imports.updated_at is 'When the server last reported on this import (every second while it runs). A running import silent for 2 minutes is marked failed (TDI18).';
