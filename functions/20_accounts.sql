-- Accounts, sessions and tokens.
-- Error codes (stable, five characters):
--   TDR01 invalid email        TDR02 password too short/long   TDR03 invalid handle
--   TDR04 reserved handle      TDR05 email already registered  TDR06 handle taken
--   TDA03 invalid token        TDA04 token expired             TDA05 token revoked / session ended
--   TDA06 bad credentials      TDA07 not signed in             TDA08 invalid api token input

create or replace function app_public.current_user_id() returns bigint
language sql stable parallel safe set search_path = pg_catalog, pg_temp as $$
  select u.id from app_public.users u where u.role_name = current_user
$$;
comment on function app_public.current_user_id() is 'Id of the signed-in user (the user whose role the session runs as), or null.';
grant execute on function app_public.current_user_id() to tdc_user, tdc_anonymous;

create or replace function app_public."current_user"() returns app_public.users
language sql stable set search_path = pg_catalog, pg_temp as $$
  select u.* from app_public.users u where u.role_name = current_user
$$;
comment on function app_public."current_user"() is 'The signed-in user, or null when anonymous.';
grant execute on function app_public."current_user"() to tdc_user, tdc_anonymous;

-- Who is calling, also from inside security definer functions (where current_user is the
-- definer). The server becomes the user with SET ROLE, which sets the `role` setting; a psql
-- login as the user's own role leaves it 'none' and session_user names them. The `role`
-- setting cannot be forged: set_config('role', ...) is checked like SET ROLE (membership).
create or replace function app_hidden.caller_role() returns text
language sql stable parallel safe set search_path = pg_catalog, pg_temp as $$
  select case when current_setting('role') = 'none' then session_user::text else current_setting('role') end
$$;
comment on function app_hidden.caller_role() is 'The role the caller acts as (the SET ROLE role, else the login role), valid inside security definer functions too.';
grant execute on function app_hidden.caller_role() to tdc_user, tdc_anonymous;

create or replace function app_hidden.require_user() returns app_public.users
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare u app_public.users;
begin
  select * into u from app_public.users where role_name = app_hidden.caller_role();
  if u.id is null then
    raise exception 'You must be signed in' using errcode = 'TDA07';
  end if;
  return u;
end $$;
comment on function app_hidden.require_user() is 'The signed-in user (see caller_role); raises TDA07 when anonymous.';
grant execute on function app_hidden.require_user() to tdc_user, tdc_anonymous;

create or replace function app_hidden.is_reserved_handle(handle text) returns boolean
language sql immutable parallel safe set search_path = pg_catalog, pg_temp as $$
  select handle in ('public', 'cron', 'information_schema', 'postgres', 'root', 'admin', 'user', 'users',
                    'tdc_user', 'graphql', 'api', 'system', 'template0', 'template1')
      or handle like 'pg\_%' or handle like 'app\_%' or handle like 'graphile%' or handle like 'tdc%'
$$;
comment on function app_hidden.is_reserved_handle(text) is 'Handles that may not name a user schema (system, extension and app schemas).';
grant execute on function app_hidden.is_reserved_handle(text) to tdc_user, tdc_anonymous;

-- Registration: one transaction creates the user row, the password hash, the role and the
-- schema. Any failure rolls all of it back: never a role without a user or a user without a schema.
create or replace function app_public.register(email text, password text, handle text default null)
returns app_public.users
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_email text := btrim(email);
  v_handle text := lower(btrim(handle));
  v_role text;
  v_user app_public.users;
  n int := 0;
begin
  if v_email is null or length(v_email) > 254 or v_email !~ '^[^@\s]+@[^@\s]+\.[^@\s]+$' then
    raise exception 'Invalid email address' using errcode = 'TDR01';
  end if;
  if password is null or length(password) < 8 then
    raise exception 'Password must be at least 8 characters' using errcode = 'TDR02';
  end if;
  if octet_length(password) > 72 then
    raise exception 'Password must be at most 72 bytes' using errcode = 'TDR02';
  end if;
  if exists (select 1 from app_public.users u where lower(u.email) = lower(v_email)) then
    raise exception 'This email is already registered' using errcode = 'TDR05';
  end if;
  if handle is not null then
    if v_handle !~ '^[a-z][a-z0-9_]{2,39}$' then
      raise exception 'Handle must be 3-40 characters: a lowercase letter, then lowercase letters, digits or _'
        using errcode = 'TDR03';
    end if;
    if app_hidden.is_reserved_handle(v_handle) then
      raise exception 'Handle "%" is reserved', v_handle using errcode = 'TDR04';
    end if;
    if exists (select 1 from app_public.users u where u.handle = v_handle)
       or exists (select 1 from pg_namespace where nspname = v_handle) then
      raise exception 'Handle "%" is taken', v_handle using errcode = 'TDR06';
    end if;
  else
    -- Default: from the email's local part, made safe, then numbered until free.
    v_handle := left(regexp_replace(lower(split_part(v_email, '@', 1)), '[^a-z0-9_]+', '_', 'g'), 30);
    if v_handle !~ '^[a-z]' then v_handle := 'u_' || v_handle; end if;
    if length(v_handle) < 3 then v_handle := rpad(v_handle, 3, '_'); end if;
    while app_hidden.is_reserved_handle(v_handle || case when n = 0 then '' else n::text end)
       or exists (select 1 from app_public.users u where u.handle = v_handle || case when n = 0 then '' else n::text end)
       or exists (select 1 from pg_namespace where nspname = v_handle || case when n = 0 then '' else n::text end) loop
      n := n + 1;
    end loop;
    v_handle := v_handle || case when n = 0 then '' else n::text end;
  end if;
  v_role := app_private.setting('role_prefix') || v_handle;

  insert into app_public.users (email, handle, role_name) values (v_email, v_handle, v_role)
    returning * into v_user;
  insert into app_private.user_secrets (user_id, password_hash)
    values (v_user.id, public.crypt(password, public.gen_salt('bf', 10)));

  execute format('create role %I nologin inherit connection limit 10', v_role);
  execute format('grant %I to %I', v_role, 'tdc_owner');          -- definer functions manage the user's objects
  execute format('grant %I to %I', v_role, 'tdc_authenticator');  -- the server may become this user (SET ROLE)
  execute format('grant tdc_user to %I', v_role);
  execute format('grant connect on database %I to %I', current_database(), v_role);
  execute format('create schema %I authorization %I', v_handle, v_role);
  execute format('comment on schema %I is %L', v_handle, 'Data of TinyDevCRM user ' || v_handle);
  execute format('alter role %I set search_path to %I, public', v_role, v_handle);
  return v_user;
exception
  when unique_violation then
    -- Two registrations racing for the same email or handle.
    if sqlerrm like '%users_email_key%' then
      raise exception 'This email is already registered' using errcode = 'TDR05';
    end if;
    raise exception 'Handle "%" is taken', v_handle using errcode = 'TDR06';
  when duplicate_object or duplicate_schema then
    raise exception 'Handle "%" is taken', v_handle using errcode = 'TDR06';
end $$;
comment on function app_public.register(text, text, text) is
  E'@resultFieldName user\nCreate an account: a user with their own Postgres role and schema (named after the handle, which defaults from the email).';
grant execute on function app_public.register(text, text, text) to tdc_anonymous;

-- JWT: HS256, signed and verified here with the instance secret.
create or replace function app_private.sign_jwt(claims jsonb) returns text
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  with parts as (
    select app_private.base64url(convert_to('{"alg":"HS256","typ":"JWT"}', 'utf8')) || '.' ||
           app_private.base64url(convert_to(claims::text, 'utf8')) as signing_input
  )
  select signing_input || '.' ||
         app_private.base64url(public.hmac(convert_to(signing_input, 'utf8'),
                                           convert_to(app_private.setting('jwt_secret'), 'utf8'), 'sha256'))
  from parts
$$;
comment on function app_private.sign_jwt(jsonb) is 'Sign claims as an HS256 JWT with the instance secret.';
revoke all on function app_private.sign_jwt(jsonb) from public;

create or replace function app_private.session_jwt(session_id uuid) returns text
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select app_private.sign_jwt(jsonb_build_object(
    'sub', s.user_id::text,
    'sid', s.id::text,
    'role', u.role_name,
    'aud', 'tinydevcrm',
    'iat', floor(extract(epoch from now()))::bigint,
    'exp', floor(extract(epoch from least(now() + app_private.setting('jwt_ttl')::interval, s.expires_at)))::bigint))
  from app_private.sessions s join app_public.users u on u.id = s.user_id
  where s.id = session_id
$$;
comment on function app_private.session_jwt(uuid) is 'A fresh JWT for a session (expires after jwt_ttl, never after the session).';
revoke all on function app_private.session_jwt(uuid) from public;

create or replace function app_public.authenticate(email text, password text) returns text
language plpgsql volatile strict security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users;
  v_hash text;
  v_session uuid;
begin
  select u.* into v_user from app_public.users u where lower(u.email) = lower(btrim(authenticate.email));
  select s.password_hash into v_hash from app_private.user_secrets s where s.user_id = v_user.id;
  -- Same work (one bcrypt) whether or not the email exists: no timing oracle.
  if v_hash is null then
    perform public.crypt(password, '$2a$10$abcdefghijklmnopqrstuuJ4rGRA1u5c9A5s3Y0WbJQcB5Ti3/N0a');
    raise exception 'Incorrect email or password' using errcode = 'TDA06';
  end if;
  if public.crypt(password, v_hash) <> v_hash then
    raise exception 'Incorrect email or password' using errcode = 'TDA06';
  end if;
  insert into app_private.sessions (user_id, expires_at)
    values (v_user.id, now() + app_private.setting('session_ttl')::interval)
    returning id into v_session;
  return app_private.session_jwt(v_session);
end $$;
comment on function app_public.authenticate(text, text) is
  E'@resultFieldName jwtToken\nSign in with email and password; returns a short-lived JWT (default 1 hour) to send as `Authorization: Bearer <jwt>`. Renew it with renewToken.';
grant execute on function app_public.authenticate(text, text) to tdc_anonymous, tdc_user;

-- The session behind the current request. The server sets tdc.session_id from the verified
-- token; a user who sets it by hand can only ever name one of their own sessions.
create or replace function app_hidden.current_session_id() returns uuid
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  return nullif(current_setting('tdc.session_id', true), '')::uuid;
exception when invalid_text_representation then
  return null;
end $$;
comment on function app_hidden.current_session_id() is 'Session id of the current request (set by the server from the verified JWT).';
grant execute on function app_hidden.current_session_id() to tdc_user, tdc_anonymous;

create or replace function app_public.renew_token() returns text
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
  v_sid uuid := app_hidden.current_session_id();
begin
  if v_sid is null or not exists (
    select 1 from app_private.sessions s
    where s.id = v_sid and s.user_id = v_user.id and s.ended_at is null and s.expires_at > now()) then
    raise exception 'No active session to renew (API tokens cannot be renewed; sign in again)' using errcode = 'TDA05';
  end if;
  return app_private.session_jwt(v_sid);
end $$;
comment on function app_public.renew_token() is
  E'@resultFieldName jwtToken\nA fresh JWT for the current session, while the current token is still valid.';
grant execute on function app_public.renew_token() to tdc_user;

create or replace function app_public.logout() returns boolean
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
  v_sid uuid := app_hidden.current_session_id();
begin
  update app_private.sessions s set ended_at = now()
  where s.id = v_sid and s.user_id = v_user.id and s.ended_at is null;
  return found;
end $$;
comment on function app_public.logout() is
  E'@resultFieldName success\nEnd the session behind the current JWT: every token of that session stops working at once (GraphQL, imports, streams).';
grant execute on function app_public.logout() to tdc_user;

create or replace function app_public.create_api_token(name text, expires_at timestamptz default null,
  out id bigint, out token text)
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
begin
  if name is null or length(btrim(name)) = 0 or length(name) > 100 then
    raise exception 'Token name must be 1-100 characters' using errcode = 'TDA08';
  end if;
  if expires_at is not null and expires_at <= now() then
    raise exception 'expiresAt must be in the future' using errcode = 'TDA08';
  end if;
  token := 'tdc_' || app_private.base64url(public.gen_random_bytes(30));
  insert into app_public.api_tokens (user_id, name, token_prefix, token_hash, expires_at)
    values (v_user.id, btrim(name), left(token, 10), public.digest(token, 'sha256'), create_api_token.expires_at)
    returning api_tokens.id into id;
end $$;
comment on function app_public.create_api_token(text, timestamptz) is
  'Create a long-lived opaque token for scripts and apps. The token is returned only here: store it now.';
grant execute on function app_public.create_api_token(text, timestamptz) to tdc_user;

create or replace function app_public.revoke_api_token(id bigint) returns app_public.api_tokens
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
  v_row app_public.api_tokens;
begin
  update app_public.api_tokens t set revoked_at = coalesce(t.revoked_at, now())
  where t.id = revoke_api_token.id and t.user_id = v_user.id
  returning * into v_row;
  if v_row.id is null then
    raise exception 'No such API token' using errcode = 'TDA08';
  end if;
  return v_row;
end $$;
comment on function app_public.revoke_api_token(bigint) is E'@resultFieldName apiToken\nRevoke one of your API tokens; it stops working at once.';
grant execute on function app_public.revoke_api_token(bigint) to tdc_user;

-- Called by the server (as the authenticator, before it switches role) for every request that
-- carries a token. Returns the role to become and when the token expires; raises TDA03/04/05 otherwise.
drop function if exists app_hidden.resolve_token(text);
create function app_hidden.resolve_token(token text,
  out role_name text, out user_id bigint, out session_id uuid, out expires_at timestamptz)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp as $$
declare
  parts text[];
  v_header jsonb;
  v_claims jsonb;
  v_expected text;
  v_sid uuid;
begin
  if token is null or length(token) > 4096 then
    raise exception 'Invalid token' using errcode = 'TDA03';
  end if;
  if token like 'tdc\_%' then
    select u.role_name, u.id, null::uuid, t.expires_at
      into role_name, user_id, session_id, expires_at
      from app_public.api_tokens t join app_public.users u on u.id = t.user_id
     where t.token_hash = public.digest(token, 'sha256');
    if user_id is null then
      raise exception 'Invalid token' using errcode = 'TDA03';
    end if;
    if exists (select 1 from app_public.api_tokens t where t.token_hash = public.digest(token, 'sha256') and t.revoked_at is not null) then
      raise exception 'This API token has been revoked' using errcode = 'TDA05';
    end if;
    if exists (select 1 from app_public.api_tokens t where t.token_hash = public.digest(token, 'sha256') and t.expires_at <= now()) then
      raise exception 'This API token has expired' using errcode = 'TDA04';
    end if;
    return;
  end if;

  parts := string_to_array(token, '.');
  if array_length(parts, 1) is distinct from 3 then
    raise exception 'Invalid token' using errcode = 'TDA03';
  end if;
  begin
    v_header := convert_from(app_private.base64url_decode(parts[1]), 'utf8')::jsonb;
    v_claims := convert_from(app_private.base64url_decode(parts[2]), 'utf8')::jsonb;
  exception when others then
    raise exception 'Invalid token' using errcode = 'TDA03';
  end;
  -- Only HS256; alg=none and friends are refused before anything else is trusted.
  if v_header is distinct from '{"alg":"HS256","typ":"JWT"}'::jsonb then
    raise exception 'Invalid token' using errcode = 'TDA03';
  end if;
  v_expected := app_private.base64url(public.hmac(convert_to(parts[1] || '.' || parts[2], 'utf8'),
                                                  convert_to(app_private.setting('jwt_secret'), 'utf8'), 'sha256'));
  if v_expected <> parts[3] then
    raise exception 'Invalid token' using errcode = 'TDA03';
  end if;
  if jsonb_typeof(v_claims -> 'exp') is distinct from 'number' or (v_claims ->> 'exp')::numeric <= extract(epoch from now()) then
    raise exception 'Token expired' using errcode = 'TDA04';
  end if;
  begin
    v_sid := (v_claims ->> 'sid')::uuid;
  exception when others then
    raise exception 'Invalid token' using errcode = 'TDA03';
  end;
  select u.role_name, u.id, s.id, least(to_timestamp((v_claims ->> 'exp')::numeric), s.expires_at)
    into role_name, user_id, session_id, expires_at
    from app_private.sessions s join app_public.users u on u.id = s.user_id
   where s.id = v_sid and s.ended_at is null and s.expires_at > now();
  if user_id is null then
    raise exception 'This session has ended; sign in again' using errcode = 'TDA05';
  end if;
end $$;
comment on function app_hidden.resolve_token(text) is 'Verify a JWT or API token and name the role to run the request as, and when the token expires (null: an API token without expiry). Only the server''s authenticator role may call it.';
revoke all on function app_hidden.resolve_token(text) from public;
grant execute on function app_hidden.resolve_token(text) to tdc_authenticator;

create or replace function app_public.enable_database_login() returns text
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
  v_password text := app_private.base64url(public.gen_random_bytes(24));
begin
  execute format('alter role %I with login password %L', v_user.role_name, v_password);
  return format('postgres://%s:%s@%s:%s/%s',
    v_user.role_name, v_password, app_private.setting('public_db_host'), current_setting('port'), current_database());
end $$;
comment on function app_public.enable_database_login() is
  E'@resultFieldName uri\nAllow psql (or any Postgres client) to log in as your own role; returns a postgres:// URI with a fresh password (any earlier password stops working). You land in your own schema and see nothing of anyone else.';
grant execute on function app_public.enable_database_login() to tdc_user;

create or replace function app_public.disable_database_login() returns boolean
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
begin
  execute format('alter role %I with nologin password null', v_user.role_name);
  -- Close the user's open psql sessions too (never the server's own connections).
  perform pg_terminate_backend(a.pid) from pg_stat_activity a
   where a.usename = v_user.role_name and a.pid <> pg_backend_pid();
  return true;
end $$;
comment on function app_public.disable_database_login() is
  E'@resultFieldName success\nRevoke direct database login for your role and close its open database sessions.';
grant execute on function app_public.disable_database_login() to tdc_user;
