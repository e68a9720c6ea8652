-- Emitting events. Every capability (imports, views, jobs, table rows) calls
-- app_hidden.emit_event; it appends to the log of each of the user's channels whose
-- sources match, and sends a tiny NOTIFY hint (the channel id) for the forwarder.
-- The hint carries nothing anyone relies on: the forwarder treats any notification on
-- 'tdc_events' (including one a user sends with pg_notify) as "look at the tables",
-- and also polls every second, so a lost or forged NOTIFY can neither lose nor inject events.

create or replace function app_hidden.emit_event(p_user_id bigint, p_kind text, p_source text, p_type text, p_data jsonb)
returns integer
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  r record;
  v_seq bigint;
  v_data jsonb := coalesce(p_data, '{}'::jsonb);
  v_bytes integer;
  n integer := 0;
begin
  -- One event must fit one Pushpin publish (1 MB body) with room to spare: bigger
  -- payloads are replaced by a stub that says so (fetch the details from the source).
  v_bytes := octet_length(v_data::text);
  if v_bytes > 262144 then
    v_data := jsonb_build_object('truncated', true, 'bytes', v_bytes);
  end if;
  for r in
    select distinct c.id
      from app_public.channels c
      join app_public.channel_sources s on s.channel_id = c.id
     where c.user_id = p_user_id
       and s.kind = p_kind
       and (s.name is null or s.name = p_source)
       and (s.events is null or p_type = any (s.events))
     order by c.id  -- one lock order for every emitter: no deadlocks between channels
  loop
    -- The head row stays locked until commit: numbers are handed out in commit order, gap-free.
    insert into app_private.channel_heads as h (channel_id, last_seq) values (r.id, 1)
      on conflict (channel_id) do update set last_seq = h.last_seq + 1
      returning h.last_seq into v_seq;
    insert into app_private.events (channel_id, seq, type, data) values (r.id, v_seq, p_type, v_data);
    perform pg_notify('tdc_events', r.id::text);
    n := n + 1;
  end loop;
  return n;
end $$;
comment on function app_hidden.emit_event(bigint, text, text, text, jsonb) is
  'Append an event (type, JSON data; payloads over 256 KiB become {"truncated":true,"bytes":n}) from a source (kind: table/view/job/imports, and its name) of a user to every matching channel of that user; returns how many channels got it. Only the owner role (definer functions, worker) may call it.';
revoke all on function app_hidden.emit_event(bigint, text, text, text, jsonb) from public;
