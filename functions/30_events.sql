-- Emitting events. Every capability (imports, views, jobs, table rows) calls
-- app_hidden.emit_event; it appends to the log of each of the user's channels whose
-- sources match, and sends a tiny NOTIFY hint (the channel id) for the forwarder.
-- The hint carries nothing anyone relies on: the forwarder treats a notification on
-- 'tdc_events' (including one a user sends with pg_notify) as "look at that channel's events
-- in the log" (any other payload: at every channel's), and also reads every channel once a
-- second, so a lost or forged NOTIFY can neither lose nor inject events.

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

-- What the forwarder (worker/forwarder.ts) publishes next: per channel, the events after its
-- cursor, in order. The cursor is the stored one (app_private.forwarder_cursors) or the one the
-- forwarder has had accepted since and not stored yet, whichever is greater. Which channels:
-- those named in p_channels (the NOTIFY hints: primary-key range scans of the log), or, when it
-- is null, every channel whose head is past its cursor. The latter scans channel_heads, whose row
-- every emitting transaction updates: at ~1,000 single-event commits/s on one channel that page
-- is contended and the scan took 10–15 ms, so the forwarder does it only on its 1 s poll tick.
-- plpgsql: its plans are prepared once per connection and reused (the forwarder calls it
-- hundreds of times a second; planning the whole query each time cost more than running it).
create or replace function app_private.forwarder_next_events(
  p_limit integer, p_accepted_ids bigint[], p_accepted_seqs bigint[], p_channels bigint[] default null)
returns table (channel_id bigint, seq bigint, type text, data text)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  if p_channels is null then
    -- Every channel whose head is past its cursor (the other cursor join is repeated below: once a second).
    p_channels := array(
      select h.channel_id
        from app_private.channel_heads h
        left join app_private.forwarder_cursors f on f.channel_id = h.channel_id
        left join unnest(p_accepted_ids, p_accepted_seqs) as m(channel_id, seq) on m.channel_id = h.channel_id
       where h.last_seq > greatest(coalesce(f.seq, 0), coalesce(m.seq, 0)));
  end if;
  return query
    select p.channel_id, e.seq, e.type, e.data::text
      from (select c.id as channel_id, greatest(coalesce(f.seq, 0), coalesce(m.seq, 0)) as cursor
              from unnest(p_channels) as c(id)
              left join app_private.forwarder_cursors f on f.channel_id = c.id
              left join unnest(p_accepted_ids, p_accepted_seqs) as m(channel_id, seq) on m.channel_id = c.id) p
     cross join lateral (
       select e.seq, e.type, e.data from app_private.events e
        where e.channel_id = p.channel_id and e.seq > p.cursor
        order by e.seq limit p_limit) e
     order by p.channel_id, e.seq;
end $$;
comment on function app_private.forwarder_next_events(integer, bigint[], bigint[], bigint[]) is
  'The forwarder''s next events: per channel (those in p_channels, or every channel with new events when null), at most p_limit events after its cursor (stored, or accepted since: p_accepted_ids/p_accepted_seqs), in order; data as JSON text.';
revoke all on function app_private.forwarder_next_events(integer, bigint[], bigint[], bigint[]) from public;
