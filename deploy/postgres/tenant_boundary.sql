-- The tenant boundary on the tenants' Postgres server: what only a superuser can set up, once
-- and again after any change to this file (every statement is idempotent).
--
--   psql -v ON_ERROR_STOP=1 -v tenant_admin=rp9_tenant_admin -v catalog=rp9_platform \
--        -d postgres -f deploy/postgres/tenant_boundary.sql
--   then: ALTER ROLE rp9_tenant_admin PASSWORD '…'   (deploy/local/stack.sh does both)
--
-- * The platform's tenant administrator (TENANT_ADMIN_DATABASE_URL) is not a superuser: it
--   creates tenant roles and databases (CREATEROLE, CREATEDB), owns the shared database and the
--   n8n templates' database, and is granted each tenant role it creates.
-- * No tenant connects to a platform database: CONNECT is revoked from PUBLIC on each and
--   granted to the logins that need it.
-- * In the shared database, an event trigger refuses any tenant's DDL outside its own schema:
--   no CREATE SCHEMA (`rp9`, another tenant's future `t_<slug>`, a template's name), no ALTER
--   SCHEMA (a rename of its own), no extension, cast, publication, foreign server, … .
--   n8n's `CREATE SCHEMA IF NOT EXISTS <its own schema>` on each connection creates nothing
--   and passes.

\set ON_ERROR_STOP on

SELECT format('CREATE ROLE %I LOGIN', :'tenant_admin')
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'tenant_admin')
\gexec
ALTER ROLE :"tenant_admin" LOGIN NOSUPERUSER CREATEDB CREATEROLE NOREPLICATION NOBYPASSRLS;
-- The platform's code pins this in every session's startup options as well.
ALTER ROLE :"tenant_admin" SET search_path = pg_catalog, pg_temp;

-- Tenant roles made before the administrator existed are its members too (the platform grants
-- it each role it creates). Only plain logins: never a role with any privilege of its own.
SELECT format('GRANT %I TO %I', r.rolname, :'tenant_admin')
FROM pg_catalog.pg_roles r
WHERE (r.rolname ~ '^[td]_[a-z0-9_]+$' OR r.rolname = 'rp9_template')
  AND NOT (r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication OR r.rolbypassrls)
  AND NOT pg_catalog.pg_has_role(:'tenant_admin', r.oid, 'USAGE')
\gexec

-- The shared database and the n8n templates' database belong to the tenant administrator.
SELECT format('CREATE DATABASE %I OWNER %I', name, :'tenant_admin')
FROM unnest(ARRAY['n8n_shared', 'rp9_templates']) AS name
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = name)
\gexec
ALTER DATABASE n8n_shared OWNER TO :"tenant_admin";
ALTER DATABASE rp9_templates OWNER TO :"tenant_admin";

-- Grants first, so that no login that needs a database loses it in between.
BEGIN;
GRANT CONNECT ON DATABASE postgres TO :"tenant_admin";
SELECT 'GRANT CONNECT ON DATABASE supabase TO authenticator'
WHERE EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'authenticator')
  AND EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = 'supabase')
\gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', datname)
FROM pg_catalog.pg_database
WHERE datname IN ('postgres', 'template1', 'supabase', 'n8n_shared', 'rp9_templates', :'catalog')
   -- Dagster's storage (runs, events, schedules): `dagster`, and a test session's `dagster_<id>`.
   OR datname ~ '^dagster(_[a-z0-9]+)?$'
\gexec
COMMIT;

\connect n8n_shared
REVOKE ALL ON SCHEMA public FROM PUBLIC;
CREATE SCHEMA IF NOT EXISTS rp9_boundary;
REVOKE ALL ON SCHEMA rp9_boundary FROM PUBLIC;

CREATE OR REPLACE FUNCTION rp9_boundary.refuse_tenant_ddl() RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  command record;
BEGIN
  -- Platform logins (a superuser, the tenant administrator) may; tenant roles never have these.
  IF EXISTS (
    SELECT FROM pg_catalog.pg_roles
    WHERE rolname = session_user AND (rolsuper OR rolcreaterole)
  ) THEN
    RETURN;
  END IF;
  FOR command IN SELECT * FROM pg_catalog.pg_event_trigger_ddl_commands() LOOP
    IF command.command_tag IN (
      'CREATE SCHEMA', 'ALTER SCHEMA', 'CREATE EXTENSION', 'ALTER EXTENSION',
      'CREATE CAST', 'CREATE PUBLICATION', 'ALTER PUBLICATION', 'CREATE SUBSCRIPTION',
      'CREATE FOREIGN DATA WRAPPER', 'ALTER FOREIGN DATA WRAPPER', 'CREATE SERVER',
      'ALTER SERVER', 'CREATE USER MAPPING', 'ALTER USER MAPPING', 'CREATE FOREIGN TABLE',
      'IMPORT FOREIGN SCHEMA', 'CREATE LANGUAGE', 'ALTER LANGUAGE', 'CREATE TRANSFORM',
      'CREATE ACCESS METHOD', 'CREATE EVENT TRIGGER', 'ALTER EVENT TRIGGER'
    ) THEN
      RAISE EXCEPTION 'rp9: % (%) is not allowed to tenant role %',
        command.command_tag, command.object_identity, session_user
        USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF command.schema_name IS NOT NULL AND NOT EXISTS (
      SELECT FROM pg_catalog.pg_namespace n
      JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
      WHERE n.nspname = command.schema_name AND r.rolname = session_user
    ) THEN
      RAISE EXCEPTION 'rp9: tenant role % creates objects only in its own schema, not in %',
        session_user, command.schema_name
        USING ERRCODE = 'insufficient_privilege';
    END IF;
  END LOOP;
END
$$;
REVOKE ALL ON FUNCTION rp9_boundary.refuse_tenant_ddl() FROM PUBLIC;

SELECT 'CREATE EVENT TRIGGER rp9_tenant_boundary ON ddl_command_end'
       ' EXECUTE FUNCTION rp9_boundary.refuse_tenant_ddl()'
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger WHERE evtname = 'rp9_tenant_boundary')
\gexec
ALTER EVENT TRIGGER rp9_tenant_boundary ENABLE ALWAYS;
