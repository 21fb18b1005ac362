-- A Supabase project, as its migrations (supabase/migrations/*.sql) make it:
-- uuid keys, an organization per customer, row level security on every table
-- the browser reaches through PostgREST, and the `authenticated` role that
-- PostgREST switches to for a signed-in user. The tests replace the role's
-- name with one of their own (roles are cluster-wide).

-- What Supabase's auth schema offers policies (the real auth.jwt()).
create schema if not exists auth;
create or replace function auth.jwt() returns jsonb
language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;
grant usage on schema auth to authenticated;
grant execute on function auth.jwt() to authenticated;

create table public.organizations (
  id uuid primary key default gen_random_uuid(),
  name text not null,
  created_at timestamptz not null default now()
);

create table public.clients (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null references public.organizations (id) on delete cascade,
  first_name text not null,
  last_name text,
  email text,
  phone text,
  created_at timestamptz not null default now()
);

create table public.jobs (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null references public.organizations (id) on delete cascade,
  client_id uuid references public.clients (id) on delete set null,
  title text not null,
  status text not null default 'scheduled'
    check (status in ('scheduled', 'in_progress', 'completed', 'cancelled')),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create table public.tasks (
  id uuid primary key default gen_random_uuid(),
  organization_id uuid not null references public.organizations (id) on delete cascade,
  job_id uuid references public.jobs (id) on delete cascade,
  title text not null,
  done boolean not null default false,
  created_at timestamptz not null default now()
);

create index jobs_organization_id_idx on public.jobs (organization_id);
create index clients_organization_id_idx on public.clients (organization_id);

-- The usual updated_at trigger of a Supabase app.
create or replace function public.handle_updated_at() returns trigger
language plpgsql as $$
begin
  new.updated_at = now();
  return new;
end;
$$;
create trigger handle_updated_at before update on public.jobs
  for each row execute procedure public.handle_updated_at();

alter table public.organizations enable row level security;
alter table public.clients enable row level security;
alter table public.jobs enable row level security;
alter table public.tasks enable row level security;

create policy "Members can view their organization" on public.organizations
  for select to authenticated using (id = (auth.jwt() ->> 'org_id')::uuid);

create policy "Members can view their clients" on public.clients
  for select to authenticated using (organization_id = (auth.jwt() ->> 'org_id')::uuid);
create policy "Members can add clients" on public.clients
  for insert to authenticated with check (organization_id = (auth.jwt() ->> 'org_id')::uuid);
create policy "Members can edit their clients" on public.clients
  for update to authenticated
  using (organization_id = (auth.jwt() ->> 'org_id')::uuid)
  with check (organization_id = (auth.jwt() ->> 'org_id')::uuid);

create policy "Members can view their jobs" on public.jobs
  for select to authenticated using (organization_id = (auth.jwt() ->> 'org_id')::uuid);
create policy "Members can add jobs" on public.jobs
  for insert to authenticated with check (organization_id = (auth.jwt() ->> 'org_id')::uuid);
create policy "Members can edit their jobs" on public.jobs
  for update to authenticated
  using (organization_id = (auth.jwt() ->> 'org_id')::uuid)
  with check (organization_id = (auth.jwt() ->> 'org_id')::uuid);

create policy "Members can view their tasks" on public.tasks
  for select to authenticated using (organization_id = (auth.jwt() ->> 'org_id')::uuid);
create policy "Members can add tasks" on public.tasks
  for insert to authenticated with check (organization_id = (auth.jwt() ->> 'org_id')::uuid);
create policy "Members can edit their tasks" on public.tasks
  for update to authenticated
  using (organization_id = (auth.jwt() ->> 'org_id')::uuid)
  with check (organization_id = (auth.jwt() ->> 'org_id')::uuid);

-- The app's own tables and nothing else: no rights on schema herald.
grant usage on schema public to authenticated;
grant select on public.organizations to authenticated;
grant select, insert, update on public.clients, public.jobs, public.tasks to authenticated;
