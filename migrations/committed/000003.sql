--! Previous: sha1:162ffbb37d5e6814993f377ea387813abc21010a
--! Hash: sha1:0784bc01e7ab165ea5e7c1b1107741bb6c6b2e46

--! split: 1-current.sql
-- A held stream ends when its token expires, not only at an idle re-check (which a stream on a
-- channel with events every minute never reaches): opening a stream queues a re-check of its
-- token's own Pushpin channel, due when the token expires (app_hidden.queue_stream_expiry).
alter table app_private.stream_rechecks add column if not exists due_at timestamptz not null default now();
comment on column app_private.stream_rechecks.due_at is 'Not before this time: a token expiry is queued when a stream opens and is due when the token expires; every other re-check is due at once.';
comment on column app_private.stream_rechecks.reason is 'Why (channel_deleted, channel_renamed, session_ended, token_revoked, token_expired).';
create index if not exists stream_rechecks_due_at on app_private.stream_rechecks (due_at);
comment on index app_private.stream_rechecks_due_at is 'The forwarder takes the re-checks that are due.';
create unique index if not exists stream_rechecks_token_expiry on app_private.stream_rechecks (grip_channel, due_at) where reason = 'token_expired';
comment on index app_private.stream_rechecks_token_expiry is 'One queued expiry per token channel and time, however many streams (and reconnects) use the token.';
