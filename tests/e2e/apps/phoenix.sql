-- A Phoenix app, as its Ecto migrations create it (`mix ecto.migrate`):
-- bigserial ids, varchar(255) strings, references with named constraints,
-- and timestamps() as inserted_at / updated_at timestamp(0) NOT NULL with no
-- default (Ecto sets both itself).

CREATE TABLE "schema_migrations" ("version" bigint, "inserted_at" timestamp(0), PRIMARY KEY ("version"));

-- 20240110120000_create_teams.exs
CREATE TABLE "teams" ("id" bigserial, "name" varchar(255) NOT NULL, "inserted_at" timestamp(0) NOT NULL, "updated_at" timestamp(0) NOT NULL, PRIMARY KEY ("id"));

-- 20240110120100_create_customers.exs
CREATE TABLE "customers" ("id" bigserial, "name" varchar(255) NOT NULL, "email" varchar(255), "phone" varchar(255), "team_id" bigint NOT NULL CONSTRAINT "customers_team_id_fkey" REFERENCES "teams"("id") ON DELETE CASCADE, "inserted_at" timestamp(0) NOT NULL, "updated_at" timestamp(0) NOT NULL, PRIMARY KEY ("id"));
CREATE INDEX "customers_team_id_index" ON "customers" ("team_id");

-- 20240110120200_create_bookings.exs
CREATE TABLE "bookings" ("id" bigserial, "service" varchar(255) NOT NULL, "status" varchar(255) DEFAULT 'pending' NOT NULL, "starts_at" timestamp(0), "team_id" bigint NOT NULL CONSTRAINT "bookings_team_id_fkey" REFERENCES "teams"("id") ON DELETE CASCADE, "customer_id" bigint NOT NULL CONSTRAINT "bookings_customer_id_fkey" REFERENCES "customers"("id") ON DELETE CASCADE, "inserted_at" timestamp(0) NOT NULL, "updated_at" timestamp(0) NOT NULL, PRIMARY KEY ("id"));
CREATE INDEX "bookings_team_id_index" ON "bookings" ("team_id");
CREATE INDEX "bookings_customer_id_index" ON "bookings" ("customer_id");

-- 20240110120300_create_tasks.exs
CREATE TABLE "tasks" ("id" bigserial, "title" varchar(255) NOT NULL, "done" boolean DEFAULT false NOT NULL, "team_id" bigint NOT NULL CONSTRAINT "tasks_team_id_fkey" REFERENCES "teams"("id") ON DELETE CASCADE, "booking_id" bigint CONSTRAINT "tasks_booking_id_fkey" REFERENCES "bookings"("id") ON DELETE SET NULL, "inserted_at" timestamp(0) NOT NULL, "updated_at" timestamp(0) NOT NULL, PRIMARY KEY ("id"));
CREATE INDEX "tasks_team_id_index" ON "tasks" ("team_id");

INSERT INTO "schema_migrations" ("version", "inserted_at") VALUES
    (20240110120000, now()), (20240110120100, now()), (20240110120200, now()), (20240110120300, now());
