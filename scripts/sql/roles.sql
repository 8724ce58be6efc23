-- Roles and database for cloudscan; run as a superuser, idempotent.
--   cloudscan      owns the schema (runs migrations); may create databases (test isolation).
--   cloudscan_app  what the services connect as: no BYPASSRLS, owns nothing, DML only.
-- Passwords here are for the loopback-only development servers; production sets its own.
SELECT format('CREATE ROLE cloudscan LOGIN CREATEDB NOSUPERUSER NOBYPASSRLS PASSWORD %L', 'cloudscan')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cloudscan') \gexec
SELECT format('CREATE ROLE cloudscan_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD %L', 'cloudscan_app')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cloudscan_app') \gexec
ALTER ROLE cloudscan_app NOBYPASSRLS NOSUPERUSER;
-- Owns the few SECURITY DEFINER functions that work across organizations (the outbox relay's
-- claim and mark): nobody logs in as it; the migrating role may assign objects to it.
SELECT 'CREATE ROLE cloudscan_maintenance NOLOGIN BYPASSRLS'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cloudscan_maintenance') \gexec
GRANT cloudscan_maintenance TO cloudscan;
SELECT 'CREATE DATABASE cloudscan OWNER cloudscan'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'cloudscan') \gexec
