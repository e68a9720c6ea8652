-- Views (materialized views from user SQL), ad-hoc queries, refresh runs and pg_cron schedules.
-- The design and the security argument are in docs/views.md. In short: user SQL is checked by
-- Postgres's own parser in the server (server/usersql.ts) before any of this runs, and is only ever
-- executed by SECURITY INVOKER functions while the caller's own role is current, so what the
-- parser cannot judge is stopped by the user's privileges. Definer functions never EXECUTE user text.
--
-- Error codes (stable, five characters):
--   TDV01 invalid view name              TDV02 name already in use in your schema
--   TDV03 no such view                   TDV04 SQL syntax error (with position)        [server]
--   TDV05 not exactly one statement [server]
--   TDV06 not a read-only query: INSERT/UPDATE/DELETE/DDL, SELECT INTO, FOR UPDATE, writable WITH [server]
--   TDV07 function not allowed in user SQL (pg_notify, set_config, large objects, advisory locks) [server]
--   TDV08 invalid uniqueKey (no such column, or not unique)
--   TDV09 query exceeded the time limit  TDV10 invalid limit
--   TDV11 other objects depend on the view (use cascade)
--   TDV12 query empty or too long        TDV13 user SQL must run as your own role
--   TDV14 result columns need distinct names (runQuery)
--   TDJ01 pg_cron is not available here  TDJ02 invalid schedule    TDJ03 no such job

-- ---------------------------------------------------------------------------------------------
-- Small helpers

create or replace function app_hidden.require_user_role() returns app_public.users
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user();
begin
  -- Invoker functions that execute user SQL must run with the user's privileges and nobody
  -- else's: refuse if called from a definer function or under another role.
  if current_user <> u.role_name then
    raise exception 'User SQL runs only as your own role (current role is %)', current_user using errcode = 'TDV13';
  end if;
  return u;
end $$;
comment on function app_hidden.require_user_role() is 'The signed-in user, asserting that the current role IS the user''s role (so user SQL executed next runs with exactly the user''s privileges). TDV13 otherwise.';
grant execute on function app_hidden.require_user_role() to tdc_user;

create or replace function app_hidden.check_view_name(name text) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if name is null or name !~ '^[a-z_][a-z0-9_]{0,62}$' then
    raise exception 'View name must be 1-63 characters: a lowercase letter or _, then lowercase letters, digits or _ (got %)',
      coalesce(quote_literal(name), 'null') using errcode = 'TDV01';
  end if;
end $$;
comment on function app_hidden.check_view_name(text) is 'Raise TDV01 unless the name is a plain lowercase identifier.';
grant execute on function app_hidden.check_view_name(text) to tdc_user;

create or replace function app_hidden.check_user_sql(query text) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if query is null or btrim(query) = '' then
    raise exception 'The query is empty' using errcode = 'TDV12';
  end if;
  if length(query) > 100000 then
    raise exception 'The query is longer than 100000 characters' using errcode = 'TDV12';
  end if;
end $$;
comment on function app_hidden.check_user_sql(text) is 'Raise TDV12 for an empty or oversized query (the full check is the parser in the server).';
grant execute on function app_hidden.check_user_sql(text) to tdc_user;


create or replace function app_hidden.strip_final_semicolon(query text) returns text
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select regexp_replace(query, ';[\s;]*$', '')
$$;
comment on function app_hidden.strip_final_semicolon(text) is 'The query without a final semicolon (so it can be embedded as a subquery).';
grant execute on function app_hidden.strip_final_semicolon(text) to tdc_user;

create or replace function app_hidden.timeout_message() returns text
language sql stable set search_path = pg_catalog, pg_temp as $$
  select format('The query did not finish within the time limit (%s)', current_setting('statement_timeout'))
$$;
comment on function app_hidden.timeout_message() is 'Message for TDV09 (statement timeout).';
grant execute on function app_hidden.timeout_message() to tdc_user;

-- ---------------------------------------------------------------------------------------------
-- Registering views (definer: bookkeeping only, never user SQL)

create or replace function app_private.view_relation(p_handle text, p_name text, p_role text) returns oid
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where n.nspname = p_handle and c.relname = p_name and c.relkind = 'm'
     and c.relowner = (select r.oid from pg_roles r where r.rolname = p_role)
$$;
comment on function app_private.view_relation(text, text, text) is 'The materialized view <handle>.<name> owned by the role, or null.';
revoke all on function app_private.view_relation(text, text, text) from public;

create or replace function app_private.make_unique_key(p_handle text, p_name text, p_role text, p_cols text[]) returns void
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_oid oid := app_private.view_relation(p_handle, p_name, p_role);
  v_missing text;
begin
  if p_cols is null then return; end if;
  if cardinality(p_cols) = 0 or cardinality(p_cols) > 32 then
    raise exception 'uniqueKey must name 1 to 32 columns' using errcode = 'TDV08';
  end if;
  select string_agg(quote_ident(c), ', ') into v_missing from unnest(p_cols) c
   where not exists (select 1 from pg_attribute a where a.attrelid = v_oid and a.attname = c and a.attnum > 0 and not a.attisdropped);
  if v_missing is not null then
    raise exception 'uniqueKey names columns the view does not have: %', v_missing using errcode = 'TDV08';
  end if;
  if (select count(distinct c) from unnest(p_cols) c) <> cardinality(p_cols) then
    raise exception 'uniqueKey names a column twice' using errcode = 'TDV08';
  end if;
  begin
    execute format('create unique index %I on %I.%I (%s)', 'tdc_ukey_' || v_oid, p_handle, p_name,
      (select string_agg(quote_ident(c), ', ') from unnest(p_cols) c));
  exception when unique_violation then
    raise exception 'uniqueKey (%) is not unique in the view''s rows', array_to_string(p_cols, ', ')
      using errcode = 'TDV08', detail = sqlerrm;
  when undefined_object or feature_not_supported then
    raise exception 'uniqueKey (%) cannot be indexed: %', array_to_string(p_cols, ', '), sqlerrm using errcode = 'TDV08';
  end;
end $$;
comment on function app_private.make_unique_key(text, text, text, text[]) is 'Create the unique index that lets refreshes of a view run CONCURRENTLY (TDV08 if the columns are missing or not unique).';
revoke all on function app_private.make_unique_key(text, text, text, text[]) from public;

create or replace function app_hidden.register_view(p_name text, p_query text, p_unique_key text[]) returns app_public.views
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
  v_view app_public.views;
  v_count bigint;
begin
  if app_private.view_relation(v_user.handle, p_name, v_user.role_name) is null then
    raise exception 'No materialized view "%" of yours to register', p_name using errcode = 'TDV03';
  end if;
  if exists (select 1 from app_public.views v where v.user_id = v_user.id and v.name = p_name) then
    raise exception 'A view named "%" already exists', p_name using errcode = 'TDV02';
  end if;
  perform app_private.make_unique_key(v_user.handle, p_name, v_user.role_name, p_unique_key);
  -- Reading a materialized view runs no user code.
  execute format('select count(*) from %I.%I', v_user.handle, p_name) into v_count;
  insert into app_public.views (user_id, name, query, unique_key, row_count, last_refreshed_at)
    values (v_user.id, p_name, p_query, p_unique_key, v_count, now())
    returning * into v_view;
  return v_view;
end $$;
comment on function app_hidden.register_view(text, text, text[]) is 'Record a materialized view the caller just created in their own schema (called by create_view, as the user).';
revoke all on function app_hidden.register_view(text, text, text[]) from public;
grant execute on function app_hidden.register_view(text, text, text[]) to tdc_user;

create or replace function app_hidden.reregister_view(p_name text, p_query text) returns app_public.views
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
  v_view app_public.views;
  v_count bigint;
begin
  select * into v_view from app_public.views v where v.user_id = v_user.id and v.name = p_name for update;
  if v_view.id is null or app_private.view_relation(v_user.handle, p_name, v_user.role_name) is null then
    raise exception 'No view named "%"', p_name using errcode = 'TDV03';
  end if;
  perform app_private.make_unique_key(v_user.handle, p_name, v_user.role_name, v_view.unique_key);
  execute format('select count(*) from %I.%I', v_user.handle, p_name) into v_count;
  update app_public.views v set query = p_query, row_count = v_count, last_refreshed_at = now(), updated_at = now()
   where v.id = v_view.id returning * into v_view;
  return v_view;
end $$;
comment on function app_hidden.reregister_view(text, text) is 'Record the new definition of a view the caller just recreated (called by alter_view, as the user).';
revoke all on function app_hidden.reregister_view(text, text) from public;
grant execute on function app_hidden.reregister_view(text, text) to tdc_user;

create or replace function app_hidden.lock_view(p_name text) returns app_public.views
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
  v_view app_public.views;
begin
  select * into v_view from app_public.views v where v.user_id = v_user.id and v.name = p_name for update;
  if v_view.id is null then
    raise exception 'No view named "%"', p_name using errcode = 'TDV03';
  end if;
  return v_view;
end $$;
comment on function app_hidden.lock_view(text) is 'The caller''s view by name, locked for the rest of the transaction (TDV03 if none).';
revoke all on function app_hidden.lock_view(text) from public;
grant execute on function app_hidden.lock_view(text) to tdc_user;

-- ---------------------------------------------------------------------------------------------
-- The API: views (invoker where user SQL runs, definer for bookkeeping)

create or replace function app_public.create_view(name text, query text, unique_key text[] default null,
  refresh_schedule text default null) returns app_public.views
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user_role();
  v_view app_public.views;
begin
  perform app_hidden.check_view_name(name);
  perform app_hidden.check_user_sql(query);
  if refresh_schedule is not null then
    perform app_hidden.require_cron();
    perform app_hidden.normalize_schedule(refresh_schedule);
  end if;
  if exists (select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = v_user.handle and c.relname = create_view.name) then
    raise exception 'Your schema already has something named "%"', name using errcode = 'TDV02';
  end if;
  -- No identity hints in the transaction user SQL runs in (not even the user's own session id);
  -- unqualified names resolve in the user's schema (until this function returns).
  perform set_config('tdc.session_id', '', true);
  perform set_config('search_path', format('%I, public', v_user.handle), true);
  begin
    -- As the user: CREATE MATERIALIZED VIEW runs the query with the user's privileges, as a
    -- security-restricted operation whose setting changes are rolled back when it ends.
    execute format(E'create materialized view %I.%I as\n%s\n', v_user.handle, name, query);
  exception when query_canceled then
    raise exception '%', app_hidden.timeout_message() using errcode = 'TDV09';
  end;
  v_view := app_hidden.register_view(name, query, unique_key);
  if refresh_schedule is not null then
    perform app_public.schedule_refresh(name, refresh_schedule);
  end if;
  return v_view;
end $$;
comment on function app_public.create_view(text, text, text[], text) is
  E'@resultFieldName view\nCreate a materialized view in your schema from one read-only query (SELECT, VALUES, TABLE, or WITH of plain SELECTs), populated now. uniqueKey (columns that identify a row) lets refreshes run CONCURRENTLY; refreshSchedule (pg_cron, five fields, GMT) refreshes it on a schedule.';
grant execute on function app_public.create_view(text, text, text[], text) to tdc_user;

create or replace function app_public.alter_view(name text, query text) returns app_public.views
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user_role();
begin
  perform app_hidden.check_user_sql(query);
  perform app_hidden.lock_view(name);
  -- No identity hints in the transaction user SQL runs in (not even the user's own session id);
  -- unqualified names resolve in the user's schema (until this function returns).
  perform set_config('tdc.session_id', '', true);
  perform set_config('search_path', format('%I, public', v_user.handle), true);
  begin
    -- One transaction: if the new query fails, the old view is still there, untouched.
    execute format('drop materialized view %I.%I', v_user.handle, name);
    execute format(E'create materialized view %I.%I as\n%s\n', v_user.handle, name, query);
  exception
    when query_canceled then
      raise exception '%', app_hidden.timeout_message() using errcode = 'TDV09';
    when dependent_objects_still_exist then
      raise exception 'Other objects depend on view "%"; drop them first', name using errcode = 'TDV11', detail = sqlerrm;
  end;
  return app_hidden.reregister_view(name, query);
end $$;
comment on function app_public.alter_view(text, text) is
  E'@resultFieldName view\nReplace a view''s query, atomically: it is recreated and repopulated in one transaction, keeping its name, uniqueKey, schedule and channels. If the new query fails, nothing changes.';
grant execute on function app_public.alter_view(text, text) to tdc_user;

create or replace function app_public.rename_view(name text, new_name text) returns app_public.views
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
  v_view app_public.views;
begin
  perform app_hidden.check_view_name(new_name);
  v_view := app_hidden.lock_view(name);
  if app_private.view_relation(v_user.handle, name, v_user.role_name) is null then
    raise exception 'View "%" no longer exists in your schema', name using errcode = 'TDV03';
  end if;
  if exists (select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = v_user.handle and c.relname = new_name) then
    raise exception 'Your schema already has something named "%"', new_name using errcode = 'TDV02';
  end if;
  execute format('alter materialized view %I.%I rename to %I', v_user.handle, name, new_name);
  update app_public.jobs j set name = new_name where j.view_id = v_view.id;
  -- Channels that listen to this view (or its job) by name follow the rename.
  update app_public.channel_sources s set name = new_name
    from app_public.channels c
   where c.id = s.channel_id and c.user_id = v_user.id and s.kind in ('view', 'job') and s.name = rename_view.name
     and not exists (select 1 from app_public.channel_sources d where d.channel_id = s.channel_id and d.kind = s.kind and d.name = new_name);
  update app_public.views v set name = new_name, updated_at = now() where v.id = v_view.id returning * into v_view;
  return v_view;
end $$;
comment on function app_public.rename_view(text, text) is E'@resultFieldName view\nRename a view; its schedule and the channel sources that name it follow.';
grant execute on function app_public.rename_view(text, text) to tdc_user;

create or replace function app_private.forget_view(p_view app_public.views) returns void
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_cron bigint;
begin
  select j.cron_job_id into v_cron from app_public.jobs j where j.view_id = p_view.id;
  if v_cron is not null then  -- null while paused
    perform app_private.cron_unschedule(v_cron);
  end if;
  delete from app_public.views v where v.id = p_view.id;
end $$;
comment on function app_private.forget_view(app_public.views) is 'Delete a view''s record, its runs and its schedule (the pg_cron job too).';
revoke all on function app_private.forget_view(app_public.views) from public;

create or replace function app_public.drop_view(name text, "cascade" boolean default false) returns app_public.views
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
  v_view app_public.views := app_hidden.lock_view(name);
  r app_public.views;
begin
  begin
    execute format('drop materialized view if exists %I.%I %s', v_user.handle, name,
      case when "cascade" then 'cascade' else 'restrict' end);
  exception when dependent_objects_still_exist then
    raise exception 'Other objects depend on view "%" (drop them first, or pass cascade: true)', name
      using errcode = 'TDV11', detail = sqlerrm;
  end;
  perform app_private.forget_view(v_view);
  -- CASCADE may have taken other views of the user with it.
  for r in select * from app_public.views v where v.user_id = v_user.id
             and app_private.view_relation(v_user.handle, v.name, v_user.role_name) is null loop
    perform app_private.forget_view(r);
  end loop;
  return v_view;
end $$;
comment on function app_public.drop_view(text, boolean) is
  E'@resultFieldName view\nDrop a view with its schedule and refresh history. With cascade, objects that depend on it are dropped too.';
grant execute on function app_public.drop_view(text, boolean) to tdc_user;

create or replace function app_public.views_columns(v app_public.views) returns jsonb
language sql stable set search_path = pg_catalog, pg_temp as $$
  select coalesce(jsonb_agg(jsonb_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod)) order by a.attnum), '[]')
    from app_public.users u
    join pg_namespace n on n.nspname = u.handle
    join pg_class c on c.relnamespace = n.oid and c.relname = v.name and c.relkind = 'm'
    join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
   where u.id = v.user_id
$$;
comment on function app_public.views_columns(app_public.views) is 'The view''s columns, in order: [{name, type}].';
grant execute on function app_public.views_columns(app_public.views) to tdc_user;

create or replace function app_public.views_last_refresh(v app_public.views) returns app_public.view_refreshes
language sql stable set search_path = pg_catalog, pg_temp as $$
  select r.* from app_public.view_refreshes r where r.view_id = v.id order by r.id desc limit 1
$$;
comment on function app_public.views_last_refresh(app_public.views) is 'The most recent refresh (manual or scheduled), failed or not.';
grant execute on function app_public.views_last_refresh(app_public.views) to tdc_user;

-- ---------------------------------------------------------------------------------------------
-- Refreshing: one transaction refreshes, computes the delta, records the run and emits the event.

create or replace function app_private.run_refresh(p_view_id bigint, p_trigger text default 'manual')
returns app_public.view_refreshes
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_view app_public.views;
  v_user app_public.users;
  v_job app_public.jobs;
  v_run app_public.view_refreshes;
  v_rel text;
  v_started timestamptz := clock_timestamp();
  v_status text := 'succeeded';
  v_error text;
  v_count bigint;
  v_added bigint;
  v_removed bigint;
  v_delta jsonb;
  v_limit bigint := coalesce(app_private.setting('view_delta_limit')::bigint, 1000);
  v_concurrently boolean;
  v_as_jsonb boolean := false;
  v_oid oid;
  v_ms double precision;
begin
  -- One refresh of a view at a time (a manual refresh waits for a scheduled one, and vice versa).
  select * into v_view from app_public.views v where v.id = p_view_id for update;
  if v_view.id is null then
    raise exception 'No view with id %', p_view_id using errcode = 'TDV03';
  end if;
  select * into v_user from app_public.users u where u.id = v_view.user_id;
  select * into v_job from app_public.jobs j where j.view_id = v_view.id;
  v_rel := format('%I.%I', v_user.handle, v_view.name);
  begin
    v_oid := app_private.view_relation(v_user.handle, v_view.name, v_user.role_name);
    if v_oid is null then
      raise exception 'materialized view % owned by % does not exist', v_rel, v_user.role_name;
    end if;
    -- CONCURRENTLY needs a populated view with a plain unique index; we make one from uniqueKey.
    v_concurrently := exists (select 1 from pg_index i where i.indrelid = v_oid and i.indisunique and i.indisvalid
                                and i.indpred is null and i.indexprs is null)
                      and (select c.relispopulated from pg_class c where c.oid = v_oid);
    -- Previous contents, to tell what this refresh changes.
    if to_regclass('pg_temp.tdc_refresh_prev') is not null then
      drop table pg_temp.tdc_refresh_prev, pg_temp.tdc_refresh_added, pg_temp.tdc_refresh_removed;
    end if;
    execute format('create temp table tdc_refresh_prev as select * from %s %s', v_rel,
      case when (select c.relispopulated from pg_class c where c.oid = v_oid) then '' else 'with no data' end);
    -- REFRESH runs the view's query as the view's owner (the user's role), security-restricted.
    execute format('refresh materialized view %s %s', case when v_concurrently then 'concurrently' else '' end, v_rel);
    begin
      execute format('create temp table tdc_refresh_added as select * from %s except all select * from pg_temp.tdc_refresh_prev', v_rel);
      get diagnostics v_added = row_count;
      execute format('create temp table tdc_refresh_removed as select * from pg_temp.tdc_refresh_prev except all select * from %s', v_rel);
      get diagnostics v_removed = row_count;
    exception when undefined_function then
      -- A column type without equality (json, point, ...): compare rows as jsonb instead.
      v_as_jsonb := true;
      execute format('create temp table tdc_refresh_added as select to_jsonb(n) as r from %s n except all select to_jsonb(p) from pg_temp.tdc_refresh_prev p', v_rel);
      get diagnostics v_added = row_count;
      execute format('create temp table tdc_refresh_removed as select to_jsonb(p) as r from pg_temp.tdc_refresh_prev p except all select to_jsonb(n) from %s n', v_rel);
      get diagnostics v_removed = row_count;
    end;
    execute format('select count(*) from %s', v_rel) into v_count;
    if v_added + v_removed <= v_limit then
      execute format('select jsonb_build_object(
          ''added'', (select coalesce(jsonb_agg(%1$s), ''[]'') from pg_temp.tdc_refresh_added a),
          ''removed'', (select coalesce(jsonb_agg(%2$s), ''[]'') from pg_temp.tdc_refresh_removed a))',
        case when v_as_jsonb then 'a.r' else 'to_jsonb(a)' end, case when v_as_jsonb then 'a.r' else 'to_jsonb(a)' end)
        into v_delta;
    else
      v_delta := jsonb_build_object('truncated', true, 'added', v_added, 'removed', v_removed);
    end if;
    drop table pg_temp.tdc_refresh_prev, pg_temp.tdc_refresh_added, pg_temp.tdc_refresh_removed;
  exception
    when query_canceled then
      v_status := 'failed';
      v_error := case when current_setting('statement_timeout') <> '0'
        then format('Refresh cancelled: it ran longer than the time limit (statement_timeout %s)', current_setting('statement_timeout'))
        else format('Refresh cancelled: it ran longer than the time limit for scheduled refreshes (%s), or was cancelled by an administrator',
                    app_private.setting('schedule_refresh_timeout')) end;
    when others then
      v_status := 'failed';
      v_error := sqlerrm;
  end;
  v_ms := round(extract(epoch from clock_timestamp() - v_started)::numeric * 1000, 3);
  insert into app_public.view_refreshes (user_id, view_id, job_id, view_name, trigger, status, started_at, finished_at,
                                         duration_ms, row_count, added, removed, error)
    values (v_user.id, v_view.id, case when p_trigger = 'schedule' then v_job.id end, v_view.name, p_trigger, v_status,
            v_started, clock_timestamp(), v_ms,
            case when v_status = 'succeeded' then v_count end,
            case when v_status = 'succeeded' then v_added end,
            case when v_status = 'succeeded' then v_removed end, v_error)
    returning * into v_run;
  if v_status = 'succeeded' then
    update app_public.views v set row_count = v_count, last_refreshed_at = v_run.finished_at where v.id = v_view.id;
    perform app_hidden.emit_event(v_user.id, 'view', v_view.name, 'view.refreshed', jsonb_build_object(
      'view', v_view.name, 'refreshId', v_run.id, 'rowCount', v_count, 'durationMs', v_ms,
      'trigger', p_trigger, 'delta', v_delta));
  else
    perform app_hidden.emit_event(v_user.id, 'view', v_view.name, 'view.refresh_failed', jsonb_build_object(
      'view', v_view.name, 'refreshId', v_run.id, 'durationMs', v_ms, 'trigger', p_trigger, 'error', v_error));
  end if;
  if p_trigger = 'schedule' and v_job.id is not null then
    perform app_hidden.emit_event(v_user.id, 'job', v_job.name,
      case when v_status = 'succeeded' then 'job.run_succeeded' else 'job.run_failed' end,
      jsonb_build_object('job', v_job.name, 'jobId', v_job.id, 'view', v_view.name, 'refreshId', v_run.id,
                         'status', v_status, 'durationMs', v_ms, 'rowCount', v_run.row_count, 'error', v_error));
  end if;
  return v_run;
end $$;
comment on function app_private.run_refresh(bigint, text) is
  'Refresh a view (CONCURRENTLY when it has a unique key), compute the delta against its previous contents, record the run and emit view.refreshed / view.refresh_failed (and job.run_succeeded / job.run_failed for scheduled runs), all in ONE transaction: the event and the refresh can never disagree. The command of every refresh pg_cron job.';
revoke all on function app_private.run_refresh(bigint, text) from public;

create or replace function app_public.refresh_view(name text) returns app_public.view_refreshes
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_view app_public.views := app_hidden.lock_view(name);
begin
  return app_private.run_refresh(v_view.id, 'manual');
end $$;
comment on function app_public.refresh_view(text) is
  E'@resultFieldName refresh\nRefresh a view now. Returns the refresh record (status failed with the error if the query failed); emits view.refreshed with what changed.';
grant execute on function app_public.refresh_view(text) to tdc_user;

-- ---------------------------------------------------------------------------------------------
-- Ad-hoc read-only queries

create or replace function app_public.run_query(query text, "limit" integer default 1000,
  out columns jsonb, out rows jsonb, out truncated boolean)
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user_role();
  v_tag text := format('tdc_query_%s_%s', pg_backend_pid(), floor(random() * 1e9)::bigint);
begin
  if "limit" is null or "limit" < 1 or "limit" > 10000 then
    raise exception 'limit must be between 1 and 10000' using errcode = 'TDV10';
  end if;
  perform app_hidden.check_user_sql(query);
  query := app_hidden.strip_final_semicolon(query);
  perform set_config('tdc.session_id', '', true);
  perform set_config('search_path', format('%I, public', v_user.handle), true);
  -- Everything below happens in a subtransaction that is always rolled back: the helper view and
  -- function, and whatever the query did besides reading (settings, notifications) are undone.
  begin
    -- A view (parse analysis only, nothing runs) gives the result's column names and types.
    execute format(E'create view %I.%I as\n%s\n', v_user.handle, v_tag, query);
    select coalesce(jsonb_agg(jsonb_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod)) order by a.attnum), '[]')
      into columns
      from pg_attribute a where a.attrelid = format('%I.%I', v_user.handle, v_tag)::regclass and a.attnum > 0;
    -- The query runs inside a SECURITY DEFINER function owned by the user's role: the user's
    -- privileges exactly, and no SET ROLE / set_config('role') possible in anything it calls
    -- (the server's login role could otherwise switch to any user).
    execute format(E'create function %I.%I() returns setof jsonb language sql volatile security definer set search_path = %I, public as %L',
      v_user.handle, v_tag, v_user.handle,
      format('select coalesce((select jsonb_agg(e.value order by e.o) from json_each(to_json(q)) with ordinality e(k, value, o)), ''[]'') from %I.%I q limit %s',
             v_user.handle, v_tag, "limit" + 1));
    -- READ ONLY from here: nothing the query calls can write.
    perform set_config('transaction_read_only', 'on', true);
    execute format('select coalesce(jsonb_agg(r), ''[]'') from %I.%I() r', v_user.handle, v_tag) into rows;
    raise exception using errcode = 'TDV99';
  exception
    when sqlstate 'TDV99' then null;
    when query_canceled then
      raise exception '%', app_hidden.timeout_message() using errcode = 'TDV09';
    when duplicate_column then
      raise exception 'Result columns need distinct names: %', sqlerrm using errcode = 'TDV14';
  end;
  truncated := jsonb_array_length(rows) > "limit";
  if truncated then
    rows := rows - "limit";
  end if;
end $$;
comment on function app_public.run_query(text, integer) is
  E'@behavior +queryField -mutationField\nRun one read-only query (SELECT, VALUES, TABLE, or WITH of plain SELECTs) over your data: columns [{name, type}], rows as arrays in column order, and whether more than `limit` rows (default 1000, at most 10000) were left out. Runs as you, READ ONLY, with a statement timeout.';
grant execute on function app_public.run_query(text, integer) to tdc_user;

-- ---------------------------------------------------------------------------------------------
-- Schedules (pg_cron). pg_cron exists only in the database named by cron.database_name, so
-- everything touching cron.* is plpgsql (names bound at run time) behind require_cron().

create or replace function app_hidden.cron_available() returns boolean
language sql stable set search_path = pg_catalog, pg_temp as $$
  select exists (select 1 from pg_extension where extname = 'pg_cron')
$$;
comment on function app_hidden.cron_available() is 'Whether pg_cron is installed in this database.';
grant execute on function app_hidden.cron_available() to tdc_user;

create or replace function app_hidden.require_cron() returns void
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  if not app_hidden.cron_available() then
    raise exception 'Schedules need pg_cron, which is not installed in this database (pg_cron runs jobs only in the database named by cron.database_name)'
      using errcode = 'TDJ01';
  end if;
end $$;
comment on function app_hidden.require_cron() is 'Raise TDJ01 unless pg_cron is installed here.';
grant execute on function app_hidden.require_cron() to tdc_user;

-- One field of a five-field cron expression → the sorted values it matches.
create or replace function app_hidden.cron_field(p_field text, p_min int, p_max int, p_what text, p_names text[] default null)
returns int[]
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
declare
  v_item text;
  v_vals int[] := '{}';
  m text[];
  v_lo int; v_hi int; v_step int;
  v_range text;
  v_i int;
begin
  if p_names is not null then
    for v_i in 1 .. cardinality(p_names) loop
      p_field := regexp_replace(lower(p_field), '\m' || p_names[v_i] || '\M', (v_i - 1 + p_min)::text, 'g');
    end loop;
  end if;
  foreach v_item in array string_to_array(p_field, ',') loop
    m := regexp_match(v_item, '^(\*|[0-9]+(?:-[0-9]+)?)(?:/([0-9]+))?$');
    if m is null then
      raise exception 'Invalid % field "%" in schedule', p_what, p_field using errcode = 'TDJ02';
    end if;
    v_range := m[1];
    v_step := coalesce(m[2]::int, 1);
    if v_range = '*' then
      v_lo := p_min; v_hi := p_max;
    elsif v_range like '%-%' then
      v_lo := split_part(v_range, '-', 1)::int; v_hi := split_part(v_range, '-', 2)::int;
    else
      v_lo := v_range::int;
      v_hi := case when m[2] is null then v_lo else p_max end;
    end if;
    if v_lo < p_min or v_hi > p_max or v_lo > v_hi or v_step < 1 then
      raise exception 'Out of range % field "%" in schedule (allowed %-%)', p_what, p_field, p_min, p_max using errcode = 'TDJ02';
    end if;
    v_vals := v_vals || array(select generate_series(v_lo, v_hi, v_step));
  end loop;
  return array(select distinct x from unnest(v_vals) x order by x);
end $$;
comment on function app_hidden.cron_field(text, int, int, text, text[]) is 'Values matched by one cron field (*, n, a-b, */s, a-b/s, lists, names); TDJ02 if invalid.';
grant execute on function app_hidden.cron_field(text, int, int, text, text[]) to tdc_user;

create or replace function app_hidden.normalize_schedule(p_schedule text) returns text
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
declare
  v text := lower(btrim(regexp_replace(coalesce(p_schedule, ''), '\s+', ' ', 'g')));
  f text[];
begin
  if v ~ '^[0-9]+ ?(s|sec|secs|second|seconds)$' then
    raise exception 'Schedules have minute granularity: this pg_cron (1.4) cannot run every few seconds (and runs in GMT). Use a five-field cron expression, e.g. "* * * * *" for every minute'
      using errcode = 'TDJ02';
  end if;
  v := case v when '@yearly' then '0 0 1 1 *' when '@annually' then '0 0 1 1 *' when '@monthly' then '0 0 1 * *'
              when '@weekly' then '0 0 * * 0' when '@daily' then '0 0 * * *' when '@midnight' then '0 0 * * *'
              when '@hourly' then '0 * * * *' else v end;
  f := string_to_array(v, ' ');
  if cardinality(f) = 6 then
    raise exception 'Schedules have minute granularity: a six-field (seconds) cron expression is not supported by this pg_cron (1.4; GMT). Use five fields: minute hour day-of-month month day-of-week'
      using errcode = 'TDJ02';
  end if;
  if v = '' or cardinality(f) <> 5 then
    raise exception 'A schedule is a five-field cron expression (minute hour day-of-month month day-of-week, GMT), e.g. "*/5 * * * *"; got "%"', p_schedule
      using errcode = 'TDJ02';
  end if;
  perform app_hidden.cron_field(f[1], 0, 59, 'minute');
  perform app_hidden.cron_field(f[2], 0, 23, 'hour');
  perform app_hidden.cron_field(f[3], 1, 31, 'day-of-month');
  perform app_hidden.cron_field(f[4], 1, 12, 'month', '{jan,feb,mar,apr,may,jun,jul,aug,sep,oct,nov,dec}');
  perform app_hidden.cron_field(f[5], 0, 7, 'day-of-week', '{sun,mon,tue,wed,thu,fri,sat}');
  return v;
end $$;
comment on function app_hidden.normalize_schedule(text) is 'Validate a pg_cron 1.4 schedule (five fields or @hourly/@daily/...; minute granularity, GMT) and return it normalised; TDJ02 with the reason otherwise.';
grant execute on function app_hidden.normalize_schedule(text) to tdc_user;

-- Next time (GMT minute boundary) strictly after p_after that a schedule fires; null if never
-- (e.g. 30 February). Same day rule as cron: if day-of-month and day-of-week are both
-- restricted, either may match.
create or replace function app_hidden.cron_next_run(p_schedule text, p_after timestamptz) returns timestamptz
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
declare
  f text[] := string_to_array(app_hidden.normalize_schedule(p_schedule), ' ');
  v_min int[] := app_hidden.cron_field(f[1], 0, 59, 'minute');
  v_hour int[] := app_hidden.cron_field(f[2], 0, 23, 'hour');
  v_dom int[] := app_hidden.cron_field(f[3], 1, 31, 'day-of-month');
  v_mon int[] := app_hidden.cron_field(f[4], 1, 12, 'month', '{jan,feb,mar,apr,may,jun,jul,aug,sep,oct,nov,dec}');
  v_dow int[] := array(select distinct x % 7 from unnest(app_hidden.cron_field(f[5], 0, 7, 'day-of-week', '{sun,mon,tue,wed,thu,fri,sat}')) x);
  v_dom_star boolean := f[3] like '*%';
  v_dow_star boolean := f[5] like '*%';
  v_after timestamp := date_trunc('minute', p_after at time zone 'UTC');
  v_day date := v_after::date;
  v_ok boolean;
  h int; m int; t timestamp;
begin
  for i in 0 .. 366 * 8 loop
    if extract(month from v_day)::int = any (v_mon) then
      if v_dom_star or v_dow_star then
        v_ok := extract(day from v_day)::int = any (v_dom) and extract(dow from v_day)::int = any (v_dow);
      else
        v_ok := extract(day from v_day)::int = any (v_dom) or extract(dow from v_day)::int = any (v_dow);
      end if;
      if v_ok then
        foreach h in array v_hour loop
          foreach m in array v_min loop
            t := v_day + make_interval(hours => h, mins => m);
            if t > v_after then
              return t at time zone 'UTC';
            end if;
          end loop;
        end loop;
      end if;
    end if;
    v_day := v_day + 1;
  end loop;
  return null;
end $$;
comment on function app_hidden.cron_next_run(text, timestamptz) is 'When a five-field cron schedule (GMT) next fires after the given time; null if never.';
grant execute on function app_hidden.cron_next_run(text, timestamptz) to tdc_user;

create or replace function app_private.cron_unschedule(p_cron_job_id bigint) returns void
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
begin
  if p_cron_job_id is not null and app_hidden.cron_available() then
    begin
      perform cron.unschedule(p_cron_job_id);
    exception when others then
      null; -- already gone (e.g. removed by hand): nothing to undo
    end;
  end if;
end $$;
comment on function app_private.cron_unschedule(bigint) is 'Remove a pg_cron job if it (and pg_cron) exists.';
revoke all on function app_private.cron_unschedule(bigint) from public;

-- pg_cron's own job table is not the truth for schedules: app_public.jobs is. A paused job has no
-- pg_cron job at all (cron.alter_job is not granted to the owner role; unschedule/schedule is).
create or replace function app_private.cron_schedule_view(p_view_id bigint, p_schedule text) returns bigint
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
begin
  perform app_hidden.require_cron();
  -- The job belongs to the owner role and runs in a background worker; its one command does the
  -- whole refresh in one transaction. Job names are unique per pg_cron user (cron.schedule with
  -- an existing name replaces that job): name it after the view id.
  return cron.schedule(format('tdc_view_%s', p_view_id), p_schedule,
                       format('select app_private.run_refresh(%s, %L)', p_view_id, 'schedule'));
exception when others then
  if sqlerrm like '%invalid schedule%' then
    raise exception 'pg_cron refused the schedule "%": %', p_schedule, sqlerrm using errcode = 'TDJ02';
  end if;
  raise;
end $$;
comment on function app_private.cron_schedule_view(bigint, text) is 'Create or replace the pg_cron job that refreshes a view; returns its pg_cron id.';
revoke all on function app_private.cron_schedule_view(bigint, text) from public;

create or replace function app_public.schedule_refresh(view text, schedule text) returns app_public.jobs
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
  v_view app_public.views;
  v_sched text;
  v_job app_public.jobs;
begin
  perform app_hidden.require_cron();
  v_sched := app_hidden.normalize_schedule(schedule);
  v_view := app_hidden.lock_view(view);
  select * into v_job from app_public.jobs j where j.view_id = v_view.id for update;
  if v_job.id is null then
    insert into app_public.jobs (user_id, view_id, name, schedule, cron_job_id)
      values (v_user.id, v_view.id, v_view.name, v_sched, app_private.cron_schedule_view(v_view.id, v_sched))
      returning * into v_job;
  else
    update app_public.jobs j set schedule = v_sched,
           cron_job_id = case when j.active then app_private.cron_schedule_view(v_view.id, v_sched) end
     where j.id = v_job.id returning * into v_job;
  end if;
  return v_job;
end $$;
comment on function app_public.schedule_refresh(text, text) is
  E'@resultFieldName job\nRefresh a view on a schedule: a pg_cron expression with five fields (minute hour day-of-month month day-of-week), minute granularity, in GMT. Replaces the view''s previous schedule. Each run is recorded and emits view.refreshed (or view.refresh_failed) and job.run_succeeded (or job.run_failed).';
grant execute on function app_public.schedule_refresh(text, text) to tdc_user;

create or replace function app_hidden.own_job(p_job bigint) returns app_public.jobs
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
  v_job app_public.jobs;
begin
  select * into v_job from app_public.jobs j where j.id = p_job and j.user_id = v_user.id for update;
  if v_job.id is null then
    raise exception 'No job with id %', p_job using errcode = 'TDJ03';
  end if;
  return v_job;
end $$;
comment on function app_hidden.own_job(bigint) is 'The caller''s job, locked (TDJ03 if none).';
revoke all on function app_hidden.own_job(bigint) from public;
grant execute on function app_hidden.own_job(bigint) to tdc_user;

create or replace function app_public.unschedule_refresh(job bigint) returns app_public.jobs
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_job app_public.jobs := app_hidden.own_job(job);
begin
  perform app_private.cron_unschedule(v_job.cron_job_id);
  delete from app_public.jobs j where j.id = v_job.id;
  return v_job;
end $$;
comment on function app_public.unschedule_refresh(bigint) is E'@resultFieldName job\nStop refreshing a view on a schedule (its past runs stay in the view''s history).';
grant execute on function app_public.unschedule_refresh(bigint) to tdc_user;

create or replace function app_private.set_job_active(p_job bigint, p_active boolean) returns app_public.jobs
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_job app_public.jobs := app_hidden.own_job(p_job);
begin
  perform app_hidden.require_cron();
  if p_active = v_job.active then
    return v_job;
  end if;
  if p_active then
    v_job.cron_job_id := app_private.cron_schedule_view(v_job.view_id, v_job.schedule);
  else
    perform app_private.cron_unschedule(v_job.cron_job_id);
    v_job.cron_job_id := null;
  end if;
  update app_public.jobs j set active = p_active, cron_job_id = v_job.cron_job_id where j.id = v_job.id returning * into v_job;
  return v_job;
end $$;
comment on function app_private.set_job_active(bigint, boolean) is 'Pause (remove the pg_cron job, keep ours) or resume (schedule it again) a job.';
revoke all on function app_private.set_job_active(bigint, boolean) from public;

create or replace function app_public.pause_job(job bigint) returns app_public.jobs
language sql volatile security definer set search_path = pg_catalog, pg_temp as $$
  select app_private.set_job_active(job, false)
$$;
comment on function app_public.pause_job(bigint) is E'@resultFieldName job\nPause a schedule: it does not run until resumed.';
grant execute on function app_public.pause_job(bigint) to tdc_user;

create or replace function app_public.resume_job(job bigint) returns app_public.jobs
language sql volatile security definer set search_path = pg_catalog, pg_temp as $$
  select app_private.set_job_active(job, true)
$$;
comment on function app_public.resume_job(bigint) is E'@resultFieldName job\nResume a paused schedule.';
grant execute on function app_public.resume_job(bigint) to tdc_user;

create or replace function app_public.jobs_next_run_at(j app_public.jobs) returns timestamptz
language sql stable set search_path = pg_catalog, pg_temp as $$
  select case when j.active then app_hidden.cron_next_run(j.schedule, now()) end
$$;
comment on function app_public.jobs_next_run_at(app_public.jobs) is 'When the job runs next (null while paused).';
grant execute on function app_public.jobs_next_run_at(app_public.jobs) to tdc_user;

create or replace function app_public.jobs_runs(j app_public.jobs) returns setof app_public.view_refreshes
language sql stable set search_path = pg_catalog, pg_temp as $$
  select r.* from app_public.view_refreshes r where r.job_id = j.id order by r.id desc
$$;
comment on function app_public.jobs_runs(app_public.jobs) is 'The job''s runs, newest first.';
grant execute on function app_public.jobs_runs(app_public.jobs) to tdc_user;

-- ---------------------------------------------------------------------------------------------
-- Maintenance (a pg_cron job of the owner role, every minute)

create or replace function app_private.maintenance() returns jsonb
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_keep interval := coalesce(app_private.setting('job_run_retention'), '7 days')::interval;
  v_per_job int := coalesce(app_private.setting('job_runs_per_job'), '1000')::int;
  v_timeout interval := coalesce(app_private.setting('schedule_refresh_timeout'), '30 seconds')::interval;
  v_cancelled int := 0;
  v_runs bigint := 0;
  v_cron_runs bigint := 0;
  n bigint;
begin
  -- pg_cron's background workers do not arm statement_timeout: cancel scheduled refreshes that
  -- overran; run_refresh catches the cancel and records a failed run with its event.
  select count(*) filter (where pg_cancel_backend(a.pid)) into v_cancelled
    from pg_stat_activity a
   where a.datname = current_database() and a.usename = current_user and a.pid <> pg_backend_pid()
     and a.state = 'active' and a.query like 'select app_private.run_refresh(%'
     and a.query_start < now() - v_timeout;
  delete from app_public.view_refreshes r where r.started_at < now() - v_keep;
  get diagnostics n = row_count; v_runs := n;
  delete from app_public.view_refreshes r using (
    select x.id, row_number() over (partition by x.view_id order by x.id desc) as rn from app_public.view_refreshes x) old
   where r.id = old.id and old.rn > v_per_job;
  get diagnostics n = row_count; v_runs := v_runs + n;
  if app_hidden.cron_available() then
    delete from cron.job_run_details d where d.end_time < now() - v_keep;
    get diagnostics n = row_count; v_cron_runs := n;
    delete from cron.job_run_details d using (
      select x.runid, row_number() over (partition by x.jobid order by x.runid desc) as rn from cron.job_run_details x) old
     where d.runid = old.runid and old.rn > v_per_job;
    get diagnostics n = row_count; v_cron_runs := v_cron_runs + n;
  end if;
  return jsonb_build_object('cancelled', v_cancelled, 'runsPruned', v_runs, 'cronRunsPruned', v_cron_runs,
    'stalledImportsFailed', app_private.fail_stalled_imports());
end $$;
comment on function app_private.maintenance() is
  'Prune refresh runs and cron.job_run_details (older than job_run_retention, beyond job_runs_per_job per view/job), cancel scheduled refreshes running longer than schedule_refresh_timeout, and mark failed the imports whose server went away (app_private.fail_stalled_imports). Run by the tdc-maintenance pg_cron job.';
revoke all on function app_private.maintenance() from public;

create or replace function app_private.ensure_maintenance_job() returns bigint
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
begin
  if not app_hidden.cron_available() then
    return null;
  end if;
  -- cron.schedule with a name replaces that job: idempotent.
  return cron.schedule('tdc-maintenance', '* * * * *', 'select app_private.maintenance()');
end $$;
comment on function app_private.ensure_maintenance_job() is 'Schedule (or re-schedule) the tdc-maintenance pg_cron job when pg_cron is installed here.';
revoke all on function app_private.ensure_maintenance_job() from public;

do $$ begin perform app_private.ensure_maintenance_job(); end $$;
