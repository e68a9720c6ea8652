-- Core helpers: settings, encoding, health. Applied on every start (create or replace).

create or replace function app_private.setting(key text) returns text
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select s.value from app_private.settings s where s.key = setting.key
$$;
comment on function app_private.setting(text) is 'Value of an instance setting (app_private.settings), for definer functions.';
revoke all on function app_private.setting(text) from public;

create or replace function app_private.base64url(data bytea) returns text
language sql immutable strict parallel safe set search_path = pg_catalog, pg_temp as $$
  select translate(rtrim(encode(data, 'base64'), '='), E'+/\n', '-_')
$$;
comment on function app_private.base64url(bytea) is 'base64url encoding without padding (RFC 7515), as used in JWTs.';

create or replace function app_private.base64url_decode(data text) returns bytea
language sql immutable strict parallel safe set search_path = pg_catalog, pg_temp as $$
  select decode(
    translate(data, '-_', '+/') || repeat('=', (4 - length(data) % 4) % 4),
    'base64')
$$;
comment on function app_private.base64url_decode(text) is 'Decode base64url (padding optional); raises on invalid input.';

create or replace function app_hidden.health() returns json
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select json_build_object(
    'cron_installed', exists(select 1 from pg_extension where extname = 'pg_cron'),
    'cron_running', exists(select 1 from pg_stat_activity where application_name = 'pg_cron scheduler'),
    'workers', (select count(*) from pg_stat_activity
                where application_name = 'tdc-worker' and datname = current_database())
  )
$$;
comment on function app_hidden.health() is 'Liveness of the parts the database can see: pg_cron installed and its launcher running, workers connected (by application_name tdc-worker).';
revoke all on function app_hidden.health() from public;
grant execute on function app_hidden.health() to tdc_authenticator;
