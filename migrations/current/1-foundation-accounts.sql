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
