-- Channels: the API to create/alter/drop them and pull their events, opt-in row events
-- on a user's tables, retention, and what the SSE route and the forwarder need.
-- Error codes (stable, five characters):
--   TDC01 invalid channel name           TDC02 channel name already in use
--   TDC03 no such channel (or not yours) TDC04 invalid source (kind, name, events, duplicates, count)
--   TDC05 source object not found in your schema / not yours
--   TDC06 invalid argument (after, first, retention)
--   TDC07 too many channels              TDC08 requested events are past retention (resync)
--   TDC09 (HTTP) request did not come through Pushpin (Grip-Sig missing or invalid)
--   TDC10 (HTTP) a stream follow-up link used with another token than the one it was made for

-- Pushpin channel names. The database name keeps instances (and test databases) apart.
create or replace function app_hidden.grip_channel(p_channel_id bigint) returns text
language sql stable parallel safe set search_path = pg_catalog, pg_temp as $$
  select 'tdc-' || current_database() || '-' || p_channel_id::text
$$;
comment on function app_hidden.grip_channel(bigint) is 'Pushpin channel carrying a channel''s events: tdc-<database>-<channel id>.';
revoke all on function app_hidden.grip_channel(bigint) from public;

-- Event types each source kind may deliver (null: any import.* type).
create or replace function app_private.source_event_types(p_kind text) returns text[]
language sql immutable parallel safe set search_path = pg_catalog, pg_temp as $$
  select case p_kind
    when 'table' then array['row.inserted', 'row.updated', 'row.deleted']
    when 'view' then array['view.refreshed', 'view.refresh_failed']
    when 'job' then array['job.run_succeeded', 'job.run_failed']
    else null end
$$;
comment on function app_private.source_event_types(text) is 'The event types a source kind emits (imports: any import.<name>).';

-- Validate and normalise a source list for a user; raises TDC04/TDC05.
create or replace function app_private.check_sources(p_user app_public.users, p_sources app_public.channel_source_spec[])
returns app_public.channel_source_spec[]
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  s app_public.channel_source_spec;
  v_out app_public.channel_source_spec[] := '{}';
  v_kind text;
  v_name text;
  v_events text[];
  v_relkind "char";
  e text;
  v_found boolean;
begin
  if p_sources is null or cardinality(p_sources) = 0 then
    raise exception 'A channel needs at least one source' using errcode = 'TDC04';
  end if;
  if cardinality(p_sources) > 20 then
    raise exception 'A channel can have at most 20 sources' using errcode = 'TDC04';
  end if;
  foreach s in array p_sources loop
    v_kind := lower(btrim(s.kind));
    v_name := nullif(btrim(s.name), '');
    if v_kind is null or v_kind not in ('table', 'view', 'job', 'imports') then
      raise exception 'Source kind must be table, view, job or imports (got %)', coalesce(s.kind, 'nothing')
        using errcode = 'TDC04';
    end if;
    if v_kind = 'imports' and v_name is not null then
      raise exception 'An imports source takes no name (it covers all your imports)' using errcode = 'TDC04';
    end if;
    if v_kind <> 'imports' and (v_name is null or length(v_name) > 63) then
      raise exception 'A % source needs the name of your % (1-63 characters)', v_kind, v_kind using errcode = 'TDC04';
    end if;
    -- Events: a non-empty subset of what the kind emits, without duplicates.
    v_events := null;
    if s.events is not null then
      if cardinality(s.events) = 0 then
        raise exception 'events must list at least one event type (omit it for all)' using errcode = 'TDC04';
      end if;
      select array_agg(distinct x order by x) into v_events from unnest(s.events) x;
      foreach e in array v_events loop
        if e is null
           or (v_kind = 'imports' and e !~ '^import\.[a-z_]{1,40}$')
           or (v_kind <> 'imports' and not e = any (app_private.source_event_types(v_kind))) then
          raise exception 'Event type % is not emitted by % sources (allowed: %)', coalesce(e, 'null'), v_kind,
            coalesce(array_to_string(app_private.source_event_types(v_kind), ', '), 'import.<name>')
            using errcode = 'TDC04';
        end if;
      end loop;
    end if;
    -- The object must be the caller's own. (Events are keyed by user id, so a foreign
    -- name could never receive anyone else's events anyway; this is for a clear error.)
    v_relkind := null;
    v_found := false;
    if v_kind in ('table', 'view') then
      select c.relkind into v_relkind
        from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
       where n.nspname = p_user.handle and c.relname = v_name;
      if v_relkind is null
         or (v_kind = 'table' and v_relkind not in ('r', 'p'))
         or (v_kind = 'view' and v_relkind not in ('v', 'm')) then
        raise exception 'No % named "%" in your schema', v_kind, v_name using errcode = 'TDC05';
      end if;
    elsif v_kind = 'job' and to_regclass('app_public.jobs') is not null then
      -- The jobs capability keeps its registry in app_public.jobs (user_id, name).
      begin
        execute 'select exists (select 1 from app_public.jobs j where j.user_id = $1 and j.name = $2)'
          into v_found using p_user.id, v_name;
      exception when undefined_column then
        v_found := true;  -- a registry of another shape: nothing to check against
      end;
      if not v_found then
        raise exception 'No job named "%" of yours', v_name using errcode = 'TDC05';
      end if;
    end if;
    if exists (select 1 from unnest(v_out) o where o.kind = v_kind and o.name is not distinct from v_name) then
      raise exception 'Source % "%" is listed twice', v_kind, coalesce(v_name, '') using errcode = 'TDC04';
    end if;
    v_out := v_out || row(v_kind, v_name, v_events)::app_public.channel_source_spec;
  end loop;
  return v_out;
end $$;
comment on function app_private.check_sources(app_public.users, app_public.channel_source_spec[]) is
  'Validate a channel''s source list for a user (TDC04 malformed, TDC05 not found/not theirs) and return it normalised.';
revoke all on function app_private.check_sources(app_public.users, app_public.channel_source_spec[]) from public;

-- Row events. The trigger function runs as the owner (it must reach emit_event), so it
-- never executes user code: values of non-built-in types (whose casts to json a user could
-- define) are rendered with their type's output function via format('%s'), never to_jsonb.
-- The user is derived from the table's schema and its owner, never from the caller or a setting.
create or replace function app_private.tg__row_events() returns trigger
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user_id bigint;
  v_all_builtin boolean;
  v_cols text[];
  v_row jsonb;
  v_old jsonb;
  v_sql text;
  v_key jsonb;
  v_vals jsonb := '{}';
  v_trunc text[] := '{}';
  v_changed text[];
  k text;
  v jsonb;
  v_type text;
begin
  select u.id into v_user_id
    from pg_catalog.pg_class c
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    join pg_catalog.pg_roles r on r.oid = n.nspowner
    join app_public.users u on u.role_name = r.rolname and u.handle = n.nspname
   where c.oid = TG_RELID;
  if v_user_id is null then
    return null;  -- not a user's schema: nothing to emit
  end if;
  select bool_and(a.atttypid < 16384), array_agg(a.attname::text order by a.attnum)
    into v_all_builtin, v_cols
    from pg_catalog.pg_attribute a
   where a.attrelid = TG_RELID and a.attnum > 0 and not a.attisdropped;
  if v_all_builtin then
    v_row := case when TG_OP = 'DELETE' then to_jsonb(OLD) else to_jsonb(NEW) end;
    if TG_OP = 'UPDATE' then v_old := to_jsonb(OLD); end if;
  else
    select 'select jsonb_build_object(' || string_agg(
             format('%L, %s', a.attname,
                    case when a.atttypid < 16384 then format('to_jsonb(($1).%I)', a.attname)
                         else format('to_jsonb(format(''%%s'', ($1).%I))', a.attname) end), ', ' order by a.attnum) || ')'
      into v_sql
      from pg_catalog.pg_attribute a
     where a.attrelid = TG_RELID and a.attnum > 0 and not a.attisdropped;
    if TG_OP = 'DELETE' then
      execute v_sql into v_row using OLD;
    else
      execute v_sql into v_row using NEW;
    end if;
    if TG_OP = 'UPDATE' then execute v_sql into v_old using OLD; end if;
  end if;
  -- The primary key identifies the row (null when the table has none).
  select jsonb_object_agg(a.attname, v_row -> a.attname::text)
    into v_key
    from pg_catalog.pg_index i
    join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey::int2[])
   where i.indrelid = TG_RELID and i.indisprimary;
  -- Large values are cut: strings to their first 1000 characters, anything else to null.
  for k, v in select * from jsonb_each(v_row) loop
    if octet_length(v::text) > 1024 then
      v_trunc := v_trunc || k;
      v := case when jsonb_typeof(v) = 'string' then to_jsonb(left(v #>> '{}', 1000)) else 'null'::jsonb end;
    end if;
    v_vals := v_vals || jsonb_build_object(k, v);
  end loop;
  if TG_OP = 'UPDATE' then
    select coalesce(array_agg(c order by o), '{}') into v_changed
      from unnest(v_cols) with ordinality as t(c, o)
     where (v_row -> c) is distinct from (v_old -> c);
  end if;
  v_type := case TG_OP when 'INSERT' then 'row.inserted' when 'UPDATE' then 'row.updated' else 'row.deleted' end;
  perform app_hidden.emit_event(v_user_id, 'table', TG_TABLE_NAME::text, v_type,
    jsonb_strip_nulls(jsonb_build_object('table', TG_TABLE_NAME::text, 'op', lower(TG_OP), 'key', v_key)) ||
    jsonb_build_object('row', v_vals) ||
    case when cardinality(v_trunc) > 0 then jsonb_build_object('truncated', to_jsonb(v_trunc)) else '{}'::jsonb end ||
    case when v_changed is not null then jsonb_build_object('changed', to_jsonb(v_changed)) else '{}'::jsonb end);
  return null;
end $$;
comment on function app_private.tg__row_events() is
  'AFTER row trigger (_900_tdc_row_events) on a user''s table that feeds a channel: emits row.inserted/updated/deleted with the key, the values (large ones truncated) and, for updates, the changed columns. The user is the owner of the table''s schema.';
revoke all on function app_private.tg__row_events() from public;

-- Install the row-event trigger on every table a channel of the user names, and remove it
-- from tables no channel names any more. Idempotent; runs after every channel change.
create or replace function app_private.sync_row_triggers(p_user_id bigint) returns void
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  v_handle text;
  r record;
begin
  select u.handle into v_handle from app_public.users u where u.id = p_user_id;
  if v_handle is null then return; end if;
  for r in
    with wanted as (
      select distinct s.name from app_public.channel_sources s
        join app_public.channels c on c.id = s.channel_id
       where c.user_id = p_user_id and s.kind = 'table')
    select c.relname::text as relname,
           exists (select 1 from pg_catalog.pg_trigger t where t.tgrelid = c.oid and t.tgname = '_900_tdc_row_events' and t.tgparentid = 0) as has_trigger,
           c.relname::text in (select name from wanted) as is_wanted
      from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where n.nspname = v_handle and c.relkind in ('r', 'p')
  loop
    if r.is_wanted and not r.has_trigger then
      execute format('create trigger _900_tdc_row_events after insert or update or delete on %I.%I '
                     'for each row execute function app_private.tg__row_events()', v_handle, r.relname);
    elsif r.has_trigger and not r.is_wanted then
      execute format('drop trigger if exists _900_tdc_row_events on %I.%I', v_handle, r.relname);
    end if;
  end loop;
end $$;
comment on function app_private.sync_row_triggers(bigint) is 'Make the row-event triggers on a user''s tables match the table sources of their channels.';
revoke all on function app_private.sync_row_triggers(bigint) from public;

create or replace function app_private.check_retention(p_retention interval, p_count integer) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if p_retention is not null and (p_retention < interval '1 minute' or p_retention > interval '366 days') then
    raise exception 'retention must be between 1 minute and 366 days' using errcode = 'TDC06';
  end if;
  if p_count is not null and (p_count < 1 or p_count > 10000000) then
    raise exception 'retentionCount must be between 1 and 10,000,000' using errcode = 'TDC06';
  end if;
end $$;
comment on function app_private.check_retention(interval, integer) is 'Raise TDC06 for a retention outside the allowed range.';
revoke all on function app_private.check_retention(interval, integer) from public;

create or replace function app_private.check_channel_name(p_name text) returns void
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if p_name is null or p_name !~ '^[a-z][a-z0-9_-]{0,62}$' then
    raise exception 'Channel name must be 1-63 characters: a lowercase letter, then lowercase letters, digits, _ or -'
      using errcode = 'TDC01';
  end if;
end $$;
comment on function app_private.check_channel_name(text) is 'Raise TDC01 for an invalid channel name.';
revoke all on function app_private.check_channel_name(text) from public;

create or replace function app_public.create_channel(name text, sources app_public.channel_source_spec[],
  retention interval default null, retention_count integer default null)
returns app_public.channels
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
  v_sources app_public.channel_source_spec[];
  v_channel app_public.channels;
begin
  perform app_private.check_channel_name(create_channel.name);
  perform app_private.check_retention(create_channel.retention, create_channel.retention_count);
  v_sources := app_private.check_sources(v_user, create_channel.sources);
  if (select count(*) from app_public.channels c where c.user_id = v_user.id) >= 100 then
    raise exception 'You can have at most 100 channels' using errcode = 'TDC07';
  end if;
  if exists (select 1 from app_public.channels c where c.user_id = v_user.id and c.name = create_channel.name) then
    raise exception 'You already have a channel named "%"', create_channel.name using errcode = 'TDC02';
  end if;
  insert into app_public.channels (user_id, name, retention, retention_count)
    values (v_user.id, create_channel.name, coalesce(create_channel.retention, interval '7 days'),
            coalesce(create_channel.retention_count, 100000))
    returning * into v_channel;
  insert into app_public.channel_sources (channel_id, kind, name, events)
    select v_channel.id, s.kind, s.name, s.events from unnest(v_sources) s;
  insert into app_private.channel_heads (channel_id) values (v_channel.id);
  perform app_private.sync_row_triggers(v_user.id);
  return v_channel;
exception when unique_violation then
  raise exception 'You already have a channel named "%"', create_channel.name using errcode = 'TDC02';
end $$;
comment on function app_public.create_channel(text, app_public.channel_source_spec[], interval, integer) is
  E'@resultFieldName channel\nCreate a channel fed by your tables (row events; this installs a trigger on each table), views, jobs or imports. Subscribe with SSE at /channels/<name>/events or pull with `events`. Retention defaults to 7 days and 100,000 events.';
grant execute on function app_public.create_channel(text, app_public.channel_source_spec[], interval, integer) to tdc_user;

create or replace function app_public.alter_channel(name text, new_name text default null,
  sources app_public.channel_source_spec[] default null, retention interval default null,
  retention_count integer default null)
returns app_public.channels
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
  v_sources app_public.channel_source_spec[];
  v_channel app_public.channels;
begin
  select c.* into v_channel from app_public.channels c
   where c.user_id = v_user.id and c.name = alter_channel.name for update;
  if v_channel.id is null then
    raise exception 'No channel named "%"', alter_channel.name using errcode = 'TDC03';
  end if;
  perform app_private.check_retention(alter_channel.retention, alter_channel.retention_count);
  if new_name is not null then
    perform app_private.check_channel_name(new_name);
    if new_name <> v_channel.name and exists (select 1 from app_public.channels c where c.user_id = v_user.id and c.name = new_name) then
      raise exception 'You already have a channel named "%"', new_name using errcode = 'TDC02';
    end if;
  end if;
  if alter_channel.sources is not null then
    v_sources := app_private.check_sources(v_user, alter_channel.sources);
    delete from app_public.channel_sources s where s.channel_id = v_channel.id;
    insert into app_public.channel_sources (channel_id, kind, name, events)
      select v_channel.id, s.kind, s.name, s.events from unnest(v_sources) s;
  end if;
  if alter_channel.new_name is not null and alter_channel.new_name <> v_channel.name then
    -- Open streams name the channel in their URL: a rename ends them (clients reconnect by the new name).
    insert into app_private.stream_rechecks (grip_channel, reason) values (app_hidden.grip_channel(v_channel.id), 'channel_renamed');
    perform pg_notify('tdc_events', '');
  end if;
  update app_public.channels c set
      name = coalesce(alter_channel.new_name, c.name),
      retention = coalesce(alter_channel.retention, c.retention),
      retention_count = coalesce(alter_channel.retention_count, c.retention_count)
   where c.id = v_channel.id
   returning * into v_channel;
  perform app_private.sync_row_triggers(v_user.id);
  return v_channel;
end $$;
comment on function app_public.alter_channel(text, text, app_public.channel_source_spec[], interval, integer) is
  E'@resultFieldName channel\nRename a channel, replace its sources (the whole list), or change its retention. Stored events are kept; open streams are kept too, except that a rename ends them (reconnect with the new name and your Last-Event-ID).';
grant execute on function app_public.alter_channel(text, text, app_public.channel_source_spec[], interval, integer) to tdc_user;

create or replace function app_public.drop_channel(name text) returns boolean
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
begin
  delete from app_public.channels c where c.user_id = v_user.id and c.name = drop_channel.name;
  if not found then
    raise exception 'No channel named "%"', drop_channel.name using errcode = 'TDC03';
  end if;
  perform app_private.sync_row_triggers(v_user.id);
  return true;
end $$;
comment on function app_public.drop_channel(text) is
  E'@resultFieldName success\nDelete a channel and its stored events; its open streams are closed.';
grant execute on function app_public.drop_channel(text) to tdc_user;

-- The caller's channel by name, with its log bounds; TDC03 if it is not theirs. `published` is
-- the forwarder's cursor: every id up to it reached Pushpin, and it is always the last id of a
-- published item, so a stream held there continues exactly with the next item Pushpin gets.
drop function if exists app_hidden.stream_open(text);
create or replace function app_hidden.stream_open(p_name text,
  out channel_id bigint, out grip_channel text, out head bigint, out pruned_through bigint, out published bigint)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_user app_public.users := app_hidden.require_user();
begin
  select c.id, app_hidden.grip_channel(c.id), coalesce(h.last_seq, 0), coalesce(h.pruned_through, 0), coalesce(f.seq, 0)
    into channel_id, grip_channel, head, pruned_through, published
    from app_public.channels c
    left join app_private.channel_heads h on h.channel_id = c.id
    left join app_private.forwarder_cursors f on f.channel_id = c.id
   where c.user_id = v_user.id and c.name = p_name;
  if channel_id is null then
    raise exception 'No channel named "%"', p_name using errcode = 'TDC03';
  end if;
end $$;
comment on function app_hidden.stream_open(text) is 'For the SSE route: the caller''s channel by name (TDC03 otherwise), its Pushpin channel, its log bounds and how far the forwarder has published.';
revoke all on function app_hidden.stream_open(text) from public;
grant execute on function app_hidden.stream_open(text) to tdc_user;

-- Events after a sequence number up to another, oldest first, as text ready for SSE (the caller's channels only).
drop function if exists app_hidden.stream_events(bigint, bigint, integer);
create or replace function app_hidden.stream_events(p_channel_id bigint, p_after bigint, p_upto bigint, p_limit integer)
returns table (seq bigint, type text, data text)
language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select e.seq, e.type, e.data::text
    from app_private.events e
   where e.channel_id = p_channel_id
     and e.seq > p_after and e.seq <= p_upto
     and exists (select 1 from app_public.channels c
                  where c.id = p_channel_id and c.user_id = (app_hidden.require_user()).id)
   order by e.seq
   limit least(greatest(p_limit, 1), 20001)
$$;
comment on function app_hidden.stream_events(bigint, bigint, bigint, integer) is 'For the SSE route: up to p_limit events of one of the caller''s channels with p_after < seq <= p_upto, in order.';
revoke all on function app_hidden.stream_events(bigint, bigint, bigint, integer) from public;
grant execute on function app_hidden.stream_events(bigint, bigint, bigint, integer) to tdc_user;

create or replace function app_public.events(channel text, after bigint default 0, first integer default 100)
returns app_public.channel_event[]
language plpgsql stable security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_open record;
  v_after bigint := coalesce(events.after, 0);
  v_first integer := coalesce(events.first, 100);
begin
  if v_after < 0 then
    raise exception 'after must be 0 or a sequence number' using errcode = 'TDC06';
  end if;
  if v_first < 1 or v_first > 1000 then
    raise exception 'first must be between 1 and 1000' using errcode = 'TDC06';
  end if;
  v_open := app_hidden.stream_open(events.channel);
  if v_after < v_open.pruned_through then
    raise exception 'Events after % are no longer kept (oldest kept: %); resync and continue from %',
      v_after, v_open.pruned_through + 1, v_open.head using errcode = 'TDC08';
  end if;
  return coalesce((
    select array_agg(row(e.seq, e.type, e.data, e.created_at)::app_public.channel_event order by e.seq)
      from (select * from app_private.events e
             where e.channel_id = v_open.channel_id and e.seq > v_after
             order by e.seq limit v_first) e), '{}');
end $$;
comment on function app_public.events(text, bigint, integer) is
  'Pull a channel''s stored events after a sequence number (0: from the oldest kept), oldest first, at most `first` (1-1000, default 100). Raises TDC08 when events after `after` have been pruned by retention: resync, then continue from the newest.';
grant execute on function app_public.events(text, bigint, integer) to tdc_user;

-- Retention: per channel, drop events older than `retention` and beyond the newest
-- `retention_count`, always a prefix of the log (so pruned_through is exact).
create or replace function app_private.prune_events() returns bigint
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  r record;
  v_upto bigint;
  v_by_time bigint;
  n bigint := 0;
  d bigint;
begin
  for r in
    select c.id, c.retention, c.retention_count, h.last_seq, h.pruned_through
      from app_public.channels c join app_private.channel_heads h on h.channel_id = c.id
     order by c.id
  loop
    select max(e.seq) into v_by_time from app_private.events e
     where e.channel_id = r.id and e.seq > r.pruned_through and e.created_at < now() - r.retention;
    v_upto := greatest(r.last_seq - r.retention_count, coalesce(v_by_time, 0), r.pruned_through);
    if v_upto > r.pruned_through then
      delete from app_private.events e where e.channel_id = r.id and e.seq <= v_upto;
      get diagnostics d = row_count;
      n := n + d;
      update app_private.channel_heads h set pruned_through = v_upto where h.channel_id = r.id;
    end if;
  end loop;
  return n;
end $$;
comment on function app_private.prune_events() is 'Apply every channel''s retention (time and count); returns how many events were removed. Run by the pg_cron job tdc-prune-events.';
revoke all on function app_private.prune_events() from public;

-- Ending held streams: queue a re-check for the forwarder, which publishes it to Pushpin as a
-- hint; Pushpin then re-requests each stream's Grip-Link and the origin ends the ones that may
-- no longer be served (unknown channel, revoked token) with an empty, non-holding answer.
create or replace function app_private.tg_channels__recheck_streams() returns trigger
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
begin
  insert into app_private.stream_rechecks (grip_channel, reason) values (app_hidden.grip_channel(OLD.id), 'channel_deleted');
  perform pg_notify('tdc_events', '');
  return null;
end $$;
comment on function app_private.tg_channels__recheck_streams() is 'A deleted channel ends its open streams (via a re-check: the origin answers 404 for it).';
revoke all on function app_private.tg_channels__recheck_streams() from public;
drop trigger if exists _900_tdc_recheck_streams on app_public.channels;
create trigger _900_tdc_recheck_streams after delete on app_public.channels
  for each row execute function app_private.tg_channels__recheck_streams();

-- Logout or a revoked token re-checks every open stream of the user (every subscriber of a
-- user's channel is that user): the streams of the ended session / revoked token end, the
-- others carry on untouched.
create or replace function app_private.tg__recheck_user_streams() returns trigger
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
begin
  insert into app_private.stream_rechecks (grip_channel, reason)
    select app_hidden.grip_channel(c.id), TG_ARGV[0] from app_public.channels c where c.user_id = NEW.user_id;
  perform pg_notify('tdc_events', '');
  return null;
end $$;
comment on function app_private.tg__recheck_user_streams() is 'An ended session or revoked API token ends the streams that used it (every stream of the user is re-checked).';
revoke all on function app_private.tg__recheck_user_streams() from public;
drop trigger if exists _900_tdc_recheck_streams on app_private.sessions;
create trigger _900_tdc_recheck_streams after update of ended_at on app_private.sessions
  for each row when (old.ended_at is null and new.ended_at is not null)
  execute function app_private.tg__recheck_user_streams('session_ended');
drop trigger if exists _900_tdc_recheck_streams on app_public.api_tokens;
create trigger _900_tdc_recheck_streams after update of revoked_at on app_public.api_tokens
  for each row when (old.revoked_at is null and new.revoked_at is not null)
  execute function app_private.tg__recheck_user_streams('token_revoked');

-- A token's expiry ends the streams it opened: each stream also listens on its token's own Pushpin
-- channel (<channel's>-t-<tag>, tag = the token's hash prefix the stream route puts in its links), and
-- a re-check of that channel, due when the token expires, makes Pushpin re-request those streams'
-- links, which the origin then refuses (TDA04). Other tokens' streams on the channel are not touched.
drop function if exists app_hidden.queue_stream_expiry(bigint, text, timestamptz);
create function app_hidden.queue_stream_expiry(p_channel_id bigint, p_tag text, p_expires_at timestamptz)
returns text
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_channel text := app_hidden.grip_channel(p_channel_id) || '-t-' || p_tag;
begin
  if p_tag !~ '^[0-9a-f]{16}$' or p_expires_at is null then
    raise exception 'queue_stream_expiry: bad arguments' using errcode = '22023';
  end if;
  insert into app_private.stream_rechecks (grip_channel, reason, due_at)
    values (v_channel, 'token_expired', p_expires_at)
    on conflict (grip_channel, due_at) where reason = 'token_expired' do nothing;
  return v_channel;
end $$;
comment on function app_hidden.queue_stream_expiry(bigint, text, timestamptz) is 'For the SSE route: queue the re-check that ends a token''s streams on a channel when the token expires (once per token channel and expiry), and name the token channel those streams must also listen on. Only the server''s authenticator role may call it.';
revoke all on function app_hidden.queue_stream_expiry(bigint, text, timestamptz) from public;
grant execute on function app_hidden.queue_stream_expiry(bigint, text, timestamptz) to tdc_authenticator;

-- Retention runs every 5 minutes where pg_cron is installed (it is only in cron.database_name).
do $$
begin
  if exists (select 1 from pg_catalog.pg_extension where extname = 'pg_cron') then
    perform cron.schedule('tdc-prune-events', '*/5 * * * *', 'select app_private.prune_events()');
  end if;
end $$;
