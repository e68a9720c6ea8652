-- Tables (define, alter, rename, drop, list, read rows) and the bookkeeping of CSV imports.
--
-- DDL runs with the caller's own privileges: these functions are security invoker, the
-- caller's role owns their schema, so the tables they create are theirs (exactly as if made
-- in psql). Only metadata and the import log are written by owner-owned definer helpers,
-- which derive the user from app_hidden.require_user() and touch nothing outside that user.
-- User text never reaches EXECUTE unparsed: identifiers are validated and quoted with %I,
-- types are rebuilt from a whitelist, default values are quoted literals.
--
-- Error codes (stable, five characters):
--   TDT01 invalid identifier (table or column name)   TDT02 type not allowed
--   TDT03 table already exists                         TDT04 no such table (or view) of yours
--   TDT05 invalid column definition / change           TDT06 views depend on it (drop refused)
--   TDT07 no such column                               TDT08 invalid rows() argument
--   TDI02 import had no data rows                      TDI04 no such table to import into / export
--   TDI05 invalid import option                        TDI12 table exists (create=true)
--   TDI15 import refused: a deferrable constraint trigger could run your code at commit
--   TDI18 (recorded on the import) interrupted: its server went away mid-import
--   TDT99 internal: rolls back the throwaway definer function (never reaches a client)
--   (HTTP-only import codes TDI01..TDI14 are listed in docs/import.md and server/routes/tables.ts.)

create or replace function app_hidden.check_identifier(p_name text, p_what text default 'name') returns text
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
begin
  if p_name is null or p_name !~ '^[a-z_][a-z0-9_]*$' or octet_length(p_name) > 63 then
    raise exception 'Invalid % "%": use a lowercase letter or _, then lowercase letters, digits or _ (at most 63 characters)',
      p_what, coalesce(left(p_name, 80), 'null') using errcode = 'TDT01';
  end if;
  return p_name;
end $$;
comment on function app_hidden.check_identifier(text, text) is 'Returns the name if it is a valid new identifier (lowercase, at most 63 bytes); raises TDT01 otherwise.';
grant execute on function app_hidden.check_identifier(text, text) to tdc_user;

-- The type whitelist. The result is rebuilt from fixed words and bounded integers, never
-- copied from the input, so it is safe to place in DDL.
create or replace function app_hidden.normalize_type(p_type text) returns text
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
declare
  v text := lower(regexp_replace(btrim(coalesce(p_type, '')), '\s+', ' ', 'g'));
  is_array boolean := v ~ '\s?\[\]$';
  base text := regexp_replace(v, '\s?\[\]$', '');
  m text[];
  r text;
begin
  r := case base
    when 'text' then 'text'
    when 'integer' then 'integer' when 'int' then 'integer' when 'int4' then 'integer'
    when 'bigint' then 'bigint' when 'int8' then 'bigint'
    when 'smallint' then 'smallint' when 'int2' then 'smallint'
    when 'real' then 'real' when 'float4' then 'real'
    when 'double precision' then 'double precision' when 'float8' then 'double precision'
    when 'numeric' then 'numeric' when 'decimal' then 'numeric'
    when 'boolean' then 'boolean' when 'bool' then 'boolean'
    when 'date' then 'date'
    when 'time' then 'time' when 'time without time zone' then 'time'
    when 'timestamp' then 'timestamp' when 'timestamp without time zone' then 'timestamp'
    when 'timestamptz' then 'timestamptz' when 'timestamp with time zone' then 'timestamptz'
    when 'interval' then 'interval'
    when 'uuid' then 'uuid'
    when 'json' then 'json'
    when 'jsonb' then 'jsonb'
    when 'bytea' then 'bytea'
    else null end;
  if r is null then
    m := regexp_match(base, '^(?:varchar|character varying) ?\( ?(\d{1,8}) ?\)$');
    if m is not null and m[1]::int between 1 and 10485760 then
      r := format('varchar(%s)', m[1]::int);
    end if;
  end if;
  if r is null then
    m := regexp_match(base, '^(?:numeric|decimal) ?\( ?(\d{1,4}) ?(?:, ?(\d{1,4}) ?)?\)$');
    if m is not null and m[1]::int between 1 and 1000 and coalesce(m[2]::int, 0) <= m[1]::int then
      r := format('numeric(%s,%s)', m[1]::int, coalesce(m[2]::int, 0));
    end if;
  end if;
  if r is null then
    raise exception 'Type "%" is not allowed. Use text, varchar(n), integer, bigint, smallint, numeric, numeric(p,s), real, double precision, boolean, date, time, timestamp, timestamptz, interval, uuid, json, jsonb, bytea, or an array of one of them (e.g. text[])',
      left(coalesce(p_type, 'null'), 80) using errcode = 'TDT02';
  end if;
  return r || case when is_array then '[]' else '' end;
end $$;
comment on function app_hidden.normalize_type(text) is 'The canonical spelling of an allowed column type; raises TDT02 for anything else.';
grant execute on function app_hidden.normalize_type(text) to tdc_user;

-- One column's DDL from a column_spec (validated: name, type, default).
create or replace function app_hidden.column_sql(c app_public.column_spec) returns text
language plpgsql immutable set search_path = pg_catalog, pg_temp as $$
declare
  v_type text;
  v_sql text;
  v_default text := c."default";
begin
  perform app_hidden.check_identifier(c.name, 'column name');
  v_type := app_hidden.normalize_type(c.type);
  v_sql := format('%I %s', c.name, v_type);
  if v_default is not null then
    v_sql := v_sql || case lower(btrim(v_default))
      when 'identity' then ' generated by default as identity'
      when 'now()' then ' default now()'
      when 'current_timestamp' then ' default now()'
      when 'current_date' then ' default current_date'
      when 'gen_random_uuid()' then ' default gen_random_uuid()'
      else format(' default %L::%s', v_default, v_type) end;
  end if;
  if coalesce(c.nullable, true) = false then v_sql := v_sql || ' not null'; end if;
  if coalesce(c."unique", false) then v_sql := v_sql || ' unique'; end if;
  return v_sql;
end $$;
comment on function app_hidden.column_sql(app_public.column_spec) is 'Column definition SQL for a column_spec: quoted name, whitelisted type, literal or known default.';
grant execute on function app_hidden.column_sql(app_public.column_spec) to tdc_user;

-- ---------------------------------------------------------------------------------------------
-- The user-code boundary. The server logs in as tdc_authenticator, a member of every user role,
-- and Postgres checks SET ROLE / set_config('role') against that SESSION user: any code a user
-- wrote (functions behind views, triggers, RLS policies, defaults, check constraints, index
-- expressions, domain checks, rules) that runs in the server's session could switch to another
-- user's role. Postgres refuses role changes inside a SECURITY DEFINER function, so every read or
-- write of a user relation that may run user code goes through a throwaway definer function
-- OWNED BY THE USER (created as the user, so it has exactly their rights; uncommitted, so no other
-- session can see or alter it) that is dropped or rolled back afterwards. Owner-owned definer
-- functions never touch user relations at all (user code there would run as tdc_owner).

create or replace function app_hidden.create_user_definer(p_args text, p_returns text, p_language text, p_body text) returns text
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user_role();
  v_fn text := format('%I.%I', u.handle, format('tdc_fn_%s_%s', pg_backend_pid(), floor(random() * 1e12)::bigint));
begin
  if p_language not in ('sql', 'plpgsql') then
    raise exception 'language must be sql or plpgsql' using errcode = 'TDT05';
  end if;
  -- Created by the user's role (require_user_role asserts current_user is it): owned by the user.
  execute format('create function %s(%s) returns %s language %s volatile security definer set search_path = pg_catalog, pg_temp as %L',
                 v_fn, p_args, p_returns, p_language, p_body);
  return v_fn;
end $$;
comment on function app_hidden.create_user_definer(text, text, text, text) is
  'Create a throwaway SECURITY DEFINER function in the caller''s schema, owned by the caller''s role (so role changes are refused in anything it runs); returns its qualified name. The caller must roll it back or drop it in the same transaction.';
grant execute on function app_hidden.create_user_definer(text, text, text, text) to tdc_user;

-- One value from a read over the caller's relations, computed inside a throwaway user-owned definer
-- function, READ ONLY, in a subtransaction that is always rolled back (the function, and anything the
-- user's code did besides reading, settings included, are undone). $1 in the query is p_arg.
create or replace function app_hidden.read_as_user(p_query text, p_arg jsonb default null) returns json
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  v_fn text;
  v_result json;
begin
  begin
    v_fn := app_hidden.create_user_definer('jsonb', 'json', 'sql', p_query);
    perform set_config('transaction_read_only', 'on', true);
    execute format('select %s($1)', v_fn) into v_result using p_arg;
    raise exception using errcode = 'TDT99';
  exception when sqlstate 'TDT99' then null;
  end;
  return v_result;
end $$;
comment on function app_hidden.read_as_user(text, jsonb) is
  'Run a one-value read query ($1 = p_arg) as the caller inside a throwaway definer function of theirs, read only, rolled back: user code it reaches cannot change role.';
grant execute on function app_hidden.read_as_user(text, jsonb) to tdc_user;

create or replace function app_hidden.exact_count(p_relid oid) returns bigint
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  v_nsp text;
  v_rel text;
begin
  select n.nspname, c.relname into v_nsp, v_rel from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where c.oid = p_relid and n.nspname = (app_hidden.require_user()).handle;
  if v_rel is null then
    raise exception 'No such table' using errcode = 'TDT04';
  end if;
  return (app_hidden.read_as_user(format('select to_json(count(*)) from %I.%I', v_nsp, v_rel)))::text::bigint;
end $$;
comment on function app_hidden.exact_count(oid) is 'Exact row count of one of the caller''s relations, counted as the caller inside a throwaway definer function (read_as_user).';
grant execute on function app_hidden.exact_count(oid) to tdc_user;

-- A relation of the caller, by exact name, in their own schema (null when there is none:
-- another user's table is indistinguishable from a missing one).
create or replace function app_hidden.user_relation(p_name text, p_kinds "char"[]) returns oid
language sql stable set search_path = pg_catalog, pg_temp as $$
  select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where n.nspname = (app_hidden.require_user()).handle and c.relname = p_name and c.relkind = any (p_kinds)
$$;
comment on function app_hidden.user_relation(text, "char"[]) is 'The oid of the caller''s relation of that name and one of those kinds in their own schema, or null.';
grant execute on function app_hidden.user_relation(text, "char"[]) to tdc_user;

-- Metadata sync: rows for tables made in psql, none for tables dropped in psql.
create or replace function app_hidden.touch_table(p_relid oid default null, p_via text default 'api') returns void
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user();
  v_nsp oid := (select n.oid from pg_namespace n where n.nspname = u.handle);
begin
  if p_relid is not null then
    if not exists (select 1 from pg_class c where c.oid = p_relid and c.relnamespace = v_nsp and c.relkind in ('r', 'p')) then
      raise exception 'No such table' using errcode = 'TDT04';
    end if;
    insert into app_private.user_tables as t (relid, user_id, created_via) values (p_relid, u.id, p_via)
      on conflict (relid) do update set updated_at = now()
      where t.user_id = u.id;
  end if;
  delete from app_private.user_tables t where t.user_id = u.id
    and not exists (select 1 from pg_class c where c.oid = t.relid and c.relnamespace = v_nsp and c.relkind in ('r', 'p'));
  insert into app_private.user_tables (relid, user_id, created_via)
    select c.oid, u.id, 'psql' from pg_class c where c.relnamespace = v_nsp and c.relkind in ('r', 'p')
    on conflict (relid) do nothing;
end $$;
comment on function app_hidden.touch_table(oid, text) is 'Record that the caller changed one of their tables (created_at on first sight, updated_at now) and sync the metadata with what the catalog holds (psql-made tables appear, dropped ones go).';
revoke all on function app_hidden.touch_table(oid, text) from public;
grant execute on function app_hidden.touch_table(oid, text) to tdc_user;

create or replace function app_hidden.describe_table(p_relid oid, p_exact boolean default false) returns app_public.table_info
language plpgsql stable security definer set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user();
  r app_public.table_info;
  v_nsp text;
begin
  select c.relname, n.nspname, case when c.reltuples < 0 then null else c.reltuples::bigint end,
         pg_total_relation_size(c.oid), t.created_at, t.updated_at
    into r.name, v_nsp, r.approximate_rows, r.size_bytes, r.created_at, r.updated_at
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    left join app_private.user_tables t on t.relid = c.oid and t.user_id = u.id
   where c.oid = p_relid and n.nspname = u.handle and c.relkind in ('r', 'p');
  if r.name is null then
    raise exception 'No such table' using errcode = 'TDT04';
  end if;
  select array_agg(row(a.attname, format_type(a.atttypid, a.atttypmod), not a.attnotnull,
                       pg_get_expr(d.adbin, d.adrelid),
                       coalesce(a.attnum = any (i.indkey::int2[]), false))::app_public.table_column order by a.attnum)
    into r.columns
    from pg_attribute a
    left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
    left join pg_index i on i.indrelid = a.attrelid and i.indisprimary
   where a.attrelid = p_relid and a.attnum > 0 and not a.attisdropped;
  -- p_exact is ignored: this owner-owned definer function never reads a user relation (user code
  -- reached by it would run as tdc_owner). app_public.tables fills exact_rows with exact_count.
  return r;
end $$;
comment on function app_hidden.describe_table(oid, boolean) is 'Description of one of the caller''s tables (columns, approximate count, size, timestamps), from the catalogs only; exact_rows stays null (p_exact is ignored: see app_hidden.exact_count).';
revoke all on function app_hidden.describe_table(oid, boolean) from public;
grant execute on function app_hidden.describe_table(oid, boolean) to tdc_user;

create or replace function app_public.tables(exact_counts boolean default false) returns setof app_public.table_info
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_oid oid;
  r app_public.table_info;
begin
  for v_oid in
    select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = (app_hidden.require_user()).handle and c.relkind in ('r', 'p')
     order by c.relname
  loop
    r := app_hidden.describe_table(v_oid);
    if coalesce(exact_counts, false) then
      r.exact_rows := app_hidden.exact_count(v_oid);
    end if;
    return next r;
  end loop;
end $$;
comment on function app_public.tables(boolean) is
  E'Your tables (also those you made in psql) with their columns, approximate row counts, size and timestamps. Pass exactCounts: true for exact row counts (a full count of every table: slower).';
grant execute on function app_public.tables(boolean) to tdc_user;

create or replace function app_public.define_table(name text, columns app_public.column_spec[], if_not_exists boolean default false)
returns app_public.table_info
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user();
  v_existing oid;
  v_defs text[] := '{}';
  v_pk text[] := '{}';
  v_names text[] := '{}';
  c app_public.column_spec;
  v_relid oid;
begin
  perform app_hidden.check_identifier(name, 'table name');
  select cl.oid into v_existing from pg_class cl join pg_namespace n on n.oid = cl.relnamespace
   where n.nspname = u.handle and cl.relname = define_table.name;
  if v_existing is not null then
    if coalesce(if_not_exists, false) and exists (select 1 from pg_class cl where cl.oid = v_existing and cl.relkind in ('r', 'p')) then
      return app_hidden.describe_table(v_existing);
    end if;
    raise exception 'A table or view named "%" already exists', name using errcode = 'TDT03';
  end if;
  if columns is null or cardinality(columns) = 0 then
    raise exception 'A table needs at least one column' using errcode = 'TDT05';
  end if;
  if cardinality(columns) > 1000 then
    raise exception 'At most 1000 columns' using errcode = 'TDT05';
  end if;
  foreach c in array columns loop
    if c.name = any (v_names) then
      raise exception 'Column "%" is given twice', c.name using errcode = 'TDT05';
    end if;
    v_names := v_names || c.name;
    v_defs := v_defs || app_hidden.column_sql(c);
    if coalesce(c.primary_key, false) then v_pk := v_pk || format('%I', c.name); end if;
  end loop;
  if cardinality(v_pk) > 0 then
    v_defs := v_defs || format('primary key (%s)', array_to_string(v_pk, ', '));
  end if;
  begin
    execute format('create table %I.%I (%s)', u.handle, name, array_to_string(v_defs, ', '));
  exception
    when duplicate_table then
      raise exception 'A table or view named "%" already exists', name using errcode = 'TDT03';
    when duplicate_column or invalid_column_definition or datatype_mismatch or invalid_text_representation or data_exception
         or feature_not_supported or invalid_table_definition or syntax_error or undefined_function then
      raise exception 'Invalid column definition: %', sqlerrm using errcode = 'TDT05';
  end;
  v_relid := format('%I.%I', u.handle, name)::regclass::oid;
  perform app_hidden.touch_table(v_relid, 'api');
  return app_hidden.describe_table(v_relid);
end $$;
comment on function app_public.define_table(text, app_public.column_spec[], boolean) is
  E'@resultFieldName table\nCreate a table in your schema. Types come from an allowed list; names are lowercase identifiers. With ifNotExists: true an existing table of that name is returned unchanged.';
grant execute on function app_public.define_table(text, app_public.column_spec[], boolean) to tdc_user;

create or replace function app_public.alter_table(name text, add_columns app_public.column_spec[] default null,
  drop_columns text[] default null, rename_columns app_public.column_rename[] default null)
returns app_public.table_info
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user();
  v_relid oid := app_hidden.user_relation(name, '{r,p}');
  v_col text;
  c app_public.column_spec;
  rn app_public.column_rename;
  v_detail text;
begin
  if v_relid is null then
    raise exception 'No table named "%"', left(name, 80) using errcode = 'TDT04';
  end if;
  if coalesce(cardinality(add_columns), 0) + coalesce(cardinality(drop_columns), 0) + coalesce(cardinality(rename_columns), 0) = 0 then
    raise exception 'Nothing to change: give addColumns, dropColumns or renameColumns' using errcode = 'TDT05';
  end if;
  begin
    foreach v_col in array coalesce(drop_columns, '{}') loop
      if not exists (select 1 from pg_attribute a where a.attrelid = v_relid and a.attname = v_col and a.attnum > 0 and not a.attisdropped) then
        raise exception 'No column "%" in table "%"', left(v_col, 80), name using errcode = 'TDT07';
      end if;
      execute format('alter table %I.%I drop column %I', u.handle, name, v_col);
    end loop;
    foreach rn in array coalesce(rename_columns, '{}') loop
      if not exists (select 1 from pg_attribute a where a.attrelid = v_relid and a.attname = rn.name and a.attnum > 0 and not a.attisdropped) then
        raise exception 'No column "%" in table "%"', left(rn.name, 80), name using errcode = 'TDT07';
      end if;
      perform app_hidden.check_identifier(rn.new_name, 'column name');
      execute format('alter table %I.%I rename column %I to %I', u.handle, name, rn.name, rn.new_name);
    end loop;
    foreach c in array coalesce(add_columns, '{}') loop
      execute format('alter table %I.%I add column %s', u.handle, name, app_hidden.column_sql(c));
    end loop;
  exception
    when dependent_objects_still_exist then
      get stacked diagnostics v_detail = pg_exception_detail;
      raise exception '% (%)', sqlerrm, replace(v_detail, E'\n', '; ')
        using errcode = 'TDT06', detail = v_detail, hint = 'Drop or change those views first.';
    when duplicate_column then
      raise exception 'Invalid change: %', sqlerrm using errcode = 'TDT05';
    when invalid_column_definition or datatype_mismatch or invalid_text_representation or data_exception
         or feature_not_supported or invalid_table_definition or not_null_violation or undefined_function then
      raise exception 'Invalid change: %', sqlerrm using errcode = 'TDT05';
  end;
  perform app_hidden.touch_table(v_relid, 'api');
  return app_hidden.describe_table(v_relid);
end $$;
comment on function app_public.alter_table(text, app_public.column_spec[], text[], app_public.column_rename[]) is
  E'@resultFieldName table\nChange a table of yours: drop columns, then rename columns, then add columns, all or nothing. Dropping a column a view uses is refused (TDT06).';
grant execute on function app_public.alter_table(text, app_public.column_spec[], text[], app_public.column_rename[]) to tdc_user;

create or replace function app_public.rename_table(name text, new_name text) returns app_public.table_info
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user();
  v_relid oid := app_hidden.user_relation(name, '{r,p}');
begin
  if v_relid is null then
    raise exception 'No table named "%"', left(name, 80) using errcode = 'TDT04';
  end if;
  perform app_hidden.check_identifier(new_name, 'table name');
  if exists (select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = u.handle and c.relname = new_name) then
    raise exception 'A table or view named "%" already exists', new_name using errcode = 'TDT03';
  end if;
  execute format('alter table %I.%I rename to %I', u.handle, name, new_name);
  perform app_hidden.touch_table(v_relid, 'api');
  return app_hidden.describe_table(v_relid);
end $$;
comment on function app_public.rename_table(text, text) is E'@resultFieldName table\nRename a table of yours (views that use it keep working).';
grant execute on function app_public.rename_table(text, text) to tdc_user;

-- Views (plain and materialized, in any schema) whose query reads the relation, by name.
create or replace function app_hidden.dependent_views(p_relid oid) returns text[]
language sql stable set search_path = pg_catalog, pg_temp as $$
  select coalesce(array_agg(distinct case when v.relnamespace = t.relnamespace then v.relname::text
                                          else format('%I.%I', vn.nspname, v.relname) end), '{}')
    from pg_class t
    join pg_depend d on d.refclassid = 'pg_class'::regclass and d.refobjid = t.oid and d.classid = 'pg_rewrite'::regclass
    join pg_rewrite r on r.oid = d.objid
    join pg_class v on v.oid = r.ev_class and v.oid <> t.oid
    join pg_namespace vn on vn.oid = v.relnamespace
   where t.oid = p_relid
$$;
comment on function app_hidden.dependent_views(oid) is 'Names of the views and materialized views that read a relation directly.';
grant execute on function app_hidden.dependent_views(oid) to tdc_user;

create or replace function app_public.drop_table(name text, "cascade" boolean default false) returns boolean
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user();
  v_relid oid := app_hidden.user_relation(name, '{r,p}');
  v_views text[];
begin
  if v_relid is null then
    raise exception 'No table named "%"', left(name, 80) using errcode = 'TDT04';
  end if;
  v_views := app_hidden.dependent_views(v_relid);
  if cardinality(v_views) > 0 and not coalesce("cascade", false) then
    raise exception 'Table "%" is used by views: %', name, array_to_string(v_views, ', ')
      using errcode = 'TDT06', detail = array_to_string(v_views, ', '),
            hint = 'Drop those views first, or pass cascade: true to drop them with the table.';
  end if;
  begin
    execute format('drop table %I.%I %s', u.handle, name, case when "cascade" then 'cascade' else 'restrict' end);
  exception when dependent_objects_still_exist then
    raise exception 'Other objects depend on table "%": %', name, sqlerrm using errcode = 'TDT06';
  end;
  perform app_hidden.touch_table(null);
  return true;
end $$;
comment on function app_public.drop_table(text, boolean) is
  E'@resultFieldName dropped\nDrop a table of yours. Refused (TDT06, naming them) when views use it, unless cascade: true, which drops those views too.';
grant execute on function app_public.drop_table(text, boolean) to tdc_user;

-- Read rows of a table or view of yours, as JSON. Runs with your privileges, in a throwaway definer function of yours.
create or replace function app_public.rows(relation text, first integer default 100, "offset" integer default 0,
  order_by text[] default null, "where" jsonb default null, with_total_count boolean default true)
returns json
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user();
  v_relid oid := app_hidden.user_relation(relation, '{r,p,v,m,f}');
  v_cols json;
  v_where text[] := '{}';
  v_order text[] := '{}';
  v_item text;
  v_col text;
  v_desc boolean;
  v_type text;
  k text;
  val jsonb;
  v_filter text;
  v_total bigint;
  v_rows json;
  v_res json;
begin
  if v_relid is null then
    raise exception 'No table or view named "%"', left(relation, 80) using errcode = 'TDT04';
  end if;
  first := coalesce(first, 100);
  "offset" := coalesce("offset", 0);
  if first < 0 or first > 1000 then
    raise exception 'first must be between 0 and 1000' using errcode = 'TDT08';
  end if;
  if "offset" < 0 then
    raise exception 'offset must not be negative' using errcode = 'TDT08';
  end if;
  select json_agg(json_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod)) order by a.attnum)
    into v_cols from pg_attribute a where a.attrelid = v_relid and a.attnum > 0 and not a.attisdropped;

  foreach v_item in array coalesce(order_by, '{}') loop
    v_desc := left(v_item, 1) = '-';
    v_col := case when v_desc then substr(v_item, 2) else v_item end;
    if not exists (select 1 from pg_attribute a where a.attrelid = v_relid and a.attname = v_col and a.attnum > 0 and not a.attisdropped) then
      raise exception 'orderBy: no column "%"', left(v_col, 80) using errcode = 'TDT07';
    end if;
    v_order := v_order || format('%I %s', v_col, case when v_desc then 'desc' else 'asc' end);
  end loop;

  if "where" is not null then
    if jsonb_typeof("where") <> 'object' then
      raise exception 'where must be a JSON object of column: value pairs' using errcode = 'TDT08';
    end if;
    for k, val in select e.key, e.value from jsonb_each("where") e loop
      select format_type(a.atttypid, a.atttypmod) into v_type from pg_attribute a
       where a.attrelid = v_relid and a.attname = k and a.attnum > 0 and not a.attisdropped;
      if v_type is null then
        raise exception 'where: no column "%"', left(k, 80) using errcode = 'TDT07';
      end if;
      v_where := v_where || case
        when jsonb_typeof(val) = 'null' then format('%I is null', k)
        when v_type = 'jsonb' then format('%I = ($1 -> %L)', k, k)
        when v_type = 'json' then format('%I::jsonb = ($1 -> %L)', k, k)
        when jsonb_typeof(val) in ('object', 'array') then format('to_jsonb(%I) = ($1 -> %L)', k, k)
        else format('%I = ($1 ->> %L)::%s', k, k, v_type) end;
    end loop;
  end if;
  v_filter := case when cardinality(v_where) > 0 then ' where ' || array_to_string(v_where, ' and ') else '' end;

  -- The read runs inside a throwaway definer function of the caller (functions behind a view, RLS
  -- policies: the user's code cannot change role there).
  begin
    v_res := app_hidden.read_as_user(
      format('select json_build_object(''rows'', (select coalesce(json_agg(s), ''[]'') from (select * from %I.%I%s%s limit %s offset %s) s), ''total'', %s)',
             u.handle, relation, v_filter,
             case when cardinality(v_order) > 0 then ' order by ' || array_to_string(v_order, ', ') else '' end,
             first, "offset",
             case when coalesce(with_total_count, true) then format('(select count(*) from %I.%I%s)', u.handle, relation, v_filter) else 'null' end),
      "where");
  exception when data_exception then
    -- Mostly a where value that is not valid for its column (e.g. "x" for an integer).
    raise exception 'Could not read rows: %', sqlerrm using errcode = 'TDT08';
  end;
  v_rows := v_res -> 'rows';
  v_total := (v_res ->> 'total')::bigint;
  return json_build_object('totalCount', v_total, 'columns', coalesce(v_cols, '[]'), 'rows', coalesce(v_rows, '[]'));
end $$;
comment on function app_public.rows(text, integer, integer, text[], jsonb, boolean) is
  E'Rows of one of your tables or views as JSON {totalCount, columns, rows}. first: at most 1000 (default 100); orderBy: column names, "-name" for descending; where: {"column": value, ...} equality filter (null matches nulls).';
grant execute on function app_public.rows(text, integer, integer, text[], jsonb, boolean) to tdc_user;

-- Imports

-- Where an import goes: validates options and the target, answers the COPY column list.
create or replace function app_hidden.import_target(p_table text, p_create boolean, p_encoding text)
returns table (schema_name text, table_name text, columns jsonb)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user();
  v_relid oid;
begin
  if p_encoding is not null and pg_char_to_encoding(p_encoding) < 0 then
    raise exception 'Unknown encoding "%"', left(p_encoding, 40) using errcode = 'TDI05';
  end if;
  if p_create then
    perform app_hidden.check_identifier(p_table, 'table name');
    if exists (select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = u.handle and c.relname = p_table) then
      raise exception 'Table "%" already exists (create=true makes a new table)', p_table using errcode = 'TDI12';
    end if;
    return query select u.handle, p_table, '[]'::jsonb;
    return;
  end if;
  v_relid := app_hidden.user_relation(p_table, '{r,p}');
  if v_relid is null then
    raise exception 'No table named "%"', left(p_table, 80) using errcode = 'TDI04';
  end if;
  return query select u.handle, p_table,
    (select jsonb_agg(jsonb_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod)) order by a.attnum)
       from pg_attribute a where a.attrelid = v_relid and a.attnum > 0 and not a.attisdropped and a.attgenerated = '');
end $$;
comment on function app_hidden.import_target(text, boolean, text) is 'Check an import''s target table (yours, or free to create) and encoding; returns its schema and insertable columns.';
grant execute on function app_hidden.import_target(text, boolean, text) to tdc_user;

create or replace function app_hidden.export_target(p_name text) returns table (schema_name text, relation_name text)
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
begin
  if app_hidden.user_relation(p_name, '{r,p,v,m,f}') is null then
    raise exception 'No table or view named "%"', left(p_name, 80) using errcode = 'TDI04';
  end if;
  return query select (app_hidden.require_user()).handle, p_name;
end $$;
comment on function app_hidden.export_target(text) is 'Check that the caller has a table or view of that name; returns its schema.';
grant execute on function app_hidden.export_target(text) to tdc_user;

create or replace function app_hidden.import_started(p_table text, p_mode text, p_created boolean, p_options jsonb) returns bigint
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user();
  v_id bigint;
begin
  insert into app_public.imports (user_id, table_name, mode, created, options)
    values (u.id, p_table, p_mode, p_created, coalesce(p_options, '{}'))
    returning id into v_id;
  perform app_hidden.emit_event(u.id, 'imports', null, 'import.started',
    jsonb_build_object('importId', v_id, 'table', p_table, 'mode', p_mode, 'created', p_created));
  return v_id;
end $$;
comment on function app_hidden.import_started(text, text, boolean, jsonb) is 'Record that an import of the caller began (status running) and emit import.started. Committed before the data flows.';
revoke all on function app_hidden.import_started(text, text, boolean, jsonb) from public;
grant execute on function app_hidden.import_started(text, text, boolean, jsonb) to tdc_user;

create or replace function app_hidden.import_progress(p_import_id bigint, p_bytes bigint) returns void
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user();
  v_table text;
begin
  update app_public.imports i set bytes = p_bytes, updated_at = now()
   where i.id = p_import_id and i.user_id = u.id and i.status = 'running'
   returning i.table_name into v_table;
  if v_table is not null then
    perform app_hidden.emit_event(u.id, 'imports', null, 'import.progress',
      jsonb_build_object('importId', p_import_id, 'table', v_table, 'bytes', p_bytes));
  end if;
end $$;
comment on function app_hidden.import_progress(bigint, bigint) is 'Bytes read so far by a running import of the caller; emits import.progress (the server calls it at most once a second).';
revoke all on function app_hidden.import_progress(bigint, bigint) from public;
grant execute on function app_hidden.import_progress(bigint, bigint) to tdc_user;

-- Called inside the import's own transaction: the record, the event and the data commit together.
create or replace function app_hidden.import_finished(p_import_id bigint, p_rows bigint, p_bytes bigint, p_ms integer) returns void
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user();
  i app_public.imports;
begin
  update app_public.imports set status = 'succeeded', rows = p_rows, bytes = p_bytes, duration_ms = p_ms, finished_at = now(), updated_at = now()
   where id = p_import_id and user_id = u.id and status = 'running'
   returning * into i;
  if i.id is null then
    raise exception 'No running import %', p_import_id using errcode = 'TDI04';
  end if;
  perform app_hidden.touch_table(app_hidden.user_relation(i.table_name, '{r,p}'), case when i.created then 'import' else 'api' end);
  perform app_hidden.emit_event(u.id, 'imports', null, 'import.finished',
    jsonb_build_object('importId', i.id, 'table', i.table_name, 'mode', i.mode, 'created', i.created,
                       'rows', p_rows, 'bytes', p_bytes, 'ms', p_ms));
end $$;
comment on function app_hidden.import_finished(bigint, bigint, bigint, integer) is 'Mark an import of the caller succeeded and emit import.finished, in the import''s own transaction.';
revoke all on function app_hidden.import_finished(bigint, bigint, bigint, integer) from public;
grant execute on function app_hidden.import_finished(bigint, bigint, bigint, integer) to tdc_user;

-- Marks a running import failed and emits import.failed: the one place that does, for the import's
-- own failure path (import_failed) and for maintenance (fail_stalled_imports). Owner only.
create or replace function app_private.fail_import(p_import_id bigint, p_error jsonb, p_bytes bigint, p_ms integer) returns boolean
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  i app_public.imports;
begin
  update app_public.imports set status = 'failed', error = p_error, bytes = p_bytes, duration_ms = p_ms, finished_at = now(), updated_at = now()
   where id = p_import_id and status = 'running'
   returning * into i;
  if i.id is null then
    return false;
  end if;
  perform app_hidden.emit_event(i.user_id, 'imports', null, 'import.failed',
    jsonb_build_object('importId', i.id, 'table', i.table_name, 'mode', i.mode, 'error', p_error, 'bytes', p_bytes, 'ms', p_ms));
  return true;
end $$;
comment on function app_private.fail_import(bigint, jsonb, bigint, integer) is 'Mark a running import failed (error, bytes, duration) and emit import.failed; false if it was not running. Owner only.';
revoke all on function app_private.fail_import(bigint, jsonb, bigint, integer) from public;

-- Called after the import's transaction rolled back, in a transaction of its own.
create or replace function app_hidden.import_failed(p_import_id bigint, p_error jsonb, p_bytes bigint, p_ms integer) returns void
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user();
begin
  if exists (select 1 from app_public.imports i where i.id = p_import_id and i.user_id = u.id) then
    perform app_private.fail_import(p_import_id, p_error, p_bytes, p_ms);
  end if;
end $$;
comment on function app_hidden.import_failed(bigint, jsonb, bigint, integer) is 'Mark an import of the caller failed (nothing of it was kept) and emit import.failed.';
revoke all on function app_hidden.import_failed(bigint, jsonb, bigint, integer) from public;
grant execute on function app_hidden.import_failed(bigint, jsonb, bigint, integer) to tdc_user;

-- A running import whose server went away (killed, crashed, lost the database) never reports
-- again; its data transaction rolled back with the connection. Maintenance marks it failed.
create or replace function app_private.fail_stalled_imports(p_silence interval default '2 minutes') returns integer
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  r record;
  n integer := 0;
  v_error constant jsonb := jsonb_build_object('code', 'TDI18',
    'message', 'The import was interrupted: its server stopped or lost the database before it finished. Nothing of it was kept; send it again.');
begin
  -- An import whose data transaction is committing right now holds its row: skipped, it finishes.
  for r in
    select i.id, i.bytes, least(extract(epoch from now() - i.started_at) * 1000, 2147483647)::integer as ms
      from app_public.imports i
     where i.status = 'running' and i.updated_at < now() - p_silence
       for update skip locked
  loop
    if app_private.fail_import(r.id, v_error, r.bytes, r.ms) then
      n := n + 1;
    end if;
  end loop;
  return n;
end $$;
comment on function app_private.fail_stalled_imports(interval) is 'Mark failed (TDI18, with an import.failed event) every running import that has not reported for p_silence (default 2 minutes): its server went away and its data rolled back. Run every minute by app_private.maintenance() (pg_cron job tdc-maintenance). Returns how many.';
revoke all on function app_private.fail_stalled_imports(interval) from public;

-- ---------------------------------------------------------------------------------------------
-- Import and export through the user-code boundary (see create_user_definer above).

-- Export: a throwaway definer function of the caller returning the relation's rows. The route
-- runs COPY (select * from <it>()) TO STDOUT in a transaction it then rolls back.
create or replace function app_hidden.export_function(p_name text) returns text
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user_role();
begin
  if app_hidden.user_relation(p_name, '{r,p,v,m,f}') is null then
    raise exception 'No table or view named "%"', left(p_name, 80) using errcode = 'TDI04';
  end if;
  return app_hidden.create_user_definer('', format('setof %I.%I', u.handle, p_name), 'sql', format('select * from %I.%I', u.handle, p_name));
end $$;
comment on function app_hidden.export_function(text) is 'For an export: a throwaway definer function of the caller (roll it back) returning the rows of their table or view; TDI04 if there is none.';
grant execute on function app_hidden.export_function(text) to tdc_user;

-- True when writing into the table (COPY, DELETE) provably runs no code a user wrote: no triggers
-- but ours, no RLS, no rules, no partitioning, built-in (or enum) column types, and no default,
-- generated column, constraint or index that depends on a function, operator, type or cast outside
-- the built-in catalog.
create or replace function app_hidden.write_runs_no_user_code(p_relid oid) returns boolean
language sql stable set search_path = pg_catalog, pg_temp as $$
  select c.relkind = 'r' and not c.relispartition and not c.relrowsecurity and not c.relhasrules
     and not exists (
       select 1 from pg_trigger t
        where t.tgrelid = c.oid and not t.tgisinternal
          and not (t.tgname = '_900_tdc_row_events' and exists (
                select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                 where p.oid = t.tgfoid and n.nspname = 'app_private' and p.proname = 'tg__row_events'
                   and p.proowner = (select r.oid from pg_roles r where r.rolname = 'tdc_owner'))))
     and not exists (
       select 1 from pg_attribute a
         join pg_type ty on ty.oid = a.atttypid
         left join pg_type el on el.oid = ty.typelem and ty.typcategory = 'A'
        where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
          and not ((ty.oid < 16384 and ty.typtype = 'b') or ty.typtype = 'e'
                   or (el.oid is not null and ((el.oid < 16384 and el.typtype = 'b') or el.typtype = 'e'))))
     and not exists (
       select 1 from pg_depend d
        where ((d.classid = 'pg_attrdef'::regclass and d.objid in (select ad.oid from pg_attrdef ad where ad.adrelid = c.oid))
            or (d.classid = 'pg_constraint'::regclass and d.objid in (select co.oid from pg_constraint co where co.conrelid = c.oid))
            or (d.classid = 'pg_class'::regclass and d.objid in (select i.indexrelid from pg_index i where i.indrelid = c.oid)))
          and ((d.refclassid = 'pg_proc'::regclass and exists (select 1 from pg_proc p where p.oid = d.refobjid and p.pronamespace <> 'pg_catalog'::regnamespace))
            or (d.refclassid = 'pg_operator'::regclass and exists (select 1 from pg_operator o where o.oid = d.refobjid and o.oprnamespace <> 'pg_catalog'::regnamespace))
            or (d.refclassid = 'pg_cast'::regclass and d.refobjid >= 16384)
            or (d.refclassid = 'pg_type'::regclass and d.refobjid >= 16384
                and not exists (select 1 from pg_type ty left join pg_type el on el.oid = ty.typelem and ty.typcategory = 'A'
                                 where ty.oid = d.refobjid and (ty.typtype = 'e' or el.typtype = 'e')))))
    from pg_class c where c.oid = p_relid
$$;
comment on function app_hidden.write_runs_no_user_code(oid) is 'Whether writing rows into the table provably runs no user-written code (the import''s fast path: a direct COPY in the server''s session).';
grant execute on function app_hidden.write_runs_no_user_code(oid) to tdc_user;

-- The import's plan, inside its data transaction: locks the table (ROW EXCLUSIVE, as COPY does, so
-- no trigger, policy, rule, default or index can be added before the COPY), then says whether the
-- fast path is safe and, per insertable column, the type a staging table gets (built-in types as
-- they are, anything else as text, cast on the way in).
create or replace function app_hidden.import_plan(p_table text) returns jsonb
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user_role();
  v_relid oid := app_hidden.user_relation(p_table, '{r,p}');
begin
  if v_relid is null then
    raise exception 'No table named "%"', left(p_table, 80) using errcode = 'TDI04';
  end if;
  execute format('lock table %I.%I in row exclusive mode', u.handle, p_table);
  return jsonb_build_object(
    'fast', app_hidden.write_runs_no_user_code(v_relid),
    'columns', (select coalesce(jsonb_agg(jsonb_build_object('name', a.attname,
                  'stageType', case when ty.oid < 16384 and ty.typtype = 'b' then format_type(a.atttypid, a.atttypmod) else 'text' end)
                  order by a.attnum), '[]')
                  from pg_attribute a join pg_type ty on ty.oid = a.atttypid
                 where a.attrelid = v_relid and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''));
end $$;
comment on function app_hidden.import_plan(text) is 'Lock an import''s target table and plan the import: {fast: direct COPY is safe, columns: [{name, stageType}]}.';
grant execute on function app_hidden.import_plan(text) to tdc_user;

-- Safe path, step 1: a temp table of plain built-in columns (no user code can run on COPY into it).
create or replace function app_hidden.import_stage(p_table text, p_columns text[]) returns text
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  v_plan jsonb := app_hidden.import_plan(p_table);
  v_name text := format('tdc_import_%s_%s', pg_backend_pid(), floor(random() * 1e12)::bigint);
  v_defs text[] := '{}';
  v_col text;
  v_type text;
begin
  perform app_hidden.require_user_role();
  foreach v_col in array p_columns loop
    select e ->> 'stageType' into v_type from jsonb_array_elements(v_plan -> 'columns') e where e ->> 'name' = v_col;
    if v_type is null then
      raise exception 'Unknown column "%"', left(v_col, 80) using errcode = 'TDT05';
    end if;
    v_defs := v_defs || format('%I %s', v_col, v_type);
  end loop;
  execute format('create temp table %I (%s) on commit drop', v_name, array_to_string(v_defs, ', '));
  return v_name;
end $$;
comment on function app_hidden.import_stage(text, text[]) is 'Safe import path: create the temp staging table (built-in column types, dropped at commit) for those columns of the caller''s table; returns its name.';
grant execute on function app_hidden.import_stage(text, text[]) to tdc_user;

-- Safe path, step 2: (delete and) insert the staged rows inside a throwaway definer function of the
-- caller: their triggers, defaults, policies, constraints run there, where role changes are refused.
-- Deferred constraint triggers are fired there too (SET CONSTRAINTS ALL IMMEDIATE).
create or replace function app_hidden.import_from_stage(p_table text, p_stage text, p_columns text[], p_replace boolean) returns bigint
language plpgsql volatile set search_path = pg_catalog, pg_temp as $$
declare
  u app_public.users := app_hidden.require_user_role();
  v_relid oid := app_hidden.user_relation(p_table, '{r,p}');
  v_cols text[] := '{}';
  v_sel text[] := '{}';
  v_col text;
  v_type text;
  v_fn text;
  v_rows bigint;
begin
  if v_relid is null then
    raise exception 'No table named "%"', left(p_table, 80) using errcode = 'TDI04';
  end if;
  if p_stage !~ '^tdc_import_[0-9]+_[0-9]+$' then
    raise exception 'Invalid staging table' using errcode = 'TDI05';
  end if;
  foreach v_col in array p_columns loop
    select format_type(a.atttypid, a.atttypmod) into v_type from pg_attribute a
     where a.attrelid = v_relid and a.attname = v_col and a.attnum > 0 and not a.attisdropped and a.attgenerated = '';
    if v_type is null then
      raise exception 'Unknown column "%"', left(v_col, 80) using errcode = 'TDT05';
    end if;
    v_cols := v_cols || format('%I', v_col);
    v_sel := v_sel || format('%I::%s', v_col, v_type);
  end loop;
  v_fn := app_hidden.create_user_definer('', 'bigint', 'plpgsql', format(
    E'declare n bigint;\nbegin\n%s  insert into %I.%I (%s) select %s from pg_temp.%I;\n  get diagnostics n = row_count;\n  set constraints all immediate;\n  return n;\nend',
    case when p_replace then format(E'  delete from %I.%I;\n', u.handle, p_table) else '' end,
    u.handle, p_table, array_to_string(v_cols, ', '), array_to_string(v_sel, ', '), p_stage));
  execute format('select %s()', v_fn) into v_rows;
  execute format('drop function %s()', v_fn);
  return v_rows;
end $$;
comment on function app_hidden.import_from_stage(text, text, text[], boolean) is 'Safe import path: move the staged rows into the caller''s table (after deleting the old ones for mode=replace) inside a throwaway definer function of the caller; returns the rows inserted.';
grant execute on function app_hidden.import_from_stage(text, text, text[], boolean) to tdc_user;

-- Last step before an import commits: a deferrable constraint trigger the caller can reach would run
-- their code at COMMIT, in the server's session, outside any definer function. Refuse (TDI15).
create or replace function app_hidden.import_check_commit() returns void
language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare
  v_what text;
begin
  select format('%s on %s', t.tgname, c.oid::regclass) into v_what
    from pg_trigger t join pg_class c on c.oid = t.tgrelid
   where t.tgdeferrable and not t.tgisinternal
     and (pg_has_role(current_user, c.relowner, 'USAGE') or has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE'))
   limit 1;
  if v_what is not null then
    raise exception 'Imports are refused while you have a deferrable constraint trigger (%): it would run at commit outside the safe context', v_what
      using errcode = 'TDI15', hint = 'Make the trigger NOT DEFERRABLE (or drop it), then import again.';
  end if;
end $$;
comment on function app_hidden.import_check_commit() is 'Raise TDI15 if a deferrable constraint trigger the caller owns or can write to exists (it could run user code at commit, outside any definer function).';
grant execute on function app_hidden.import_check_commit() to tdc_user;
