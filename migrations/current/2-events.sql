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
