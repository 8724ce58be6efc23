-- Organizations and projects administered (issue 9): the per-organization switch for creating a
-- project on a gateway's first use of its key, the audit trail of every administrative change,
-- and the one cross-organization read a platform admin needs (listing organizations).

ALTER TABLE organizations ADD COLUMN auto_create_projects boolean NOT NULL DEFAULT false;

-- Every change made through the administration API or `cloudscan admin`: who, what, when, the
-- entity before and after (NULL before a create). Append-only for the services' role.
CREATE TABLE admin_audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id uuid NOT NULL,
    actor text NOT NULL CHECK (length(actor) BETWEEN 1 AND 300),
    via text NOT NULL CHECK (via IN ('http', 'grpc', 'cli', 'scan-create')),
    action text NOT NULL,
    entity_type text NOT NULL CHECK (entity_type IN ('organization', 'project')),
    entity_id uuid NOT NULL,
    before jsonb,
    after jsonb,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_audit_org_at_idx ON admin_audit (organization_id, at DESC, id DESC);
CREATE INDEX admin_audit_entity_idx ON admin_audit (entity_id, id);

ALTER TABLE admin_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE admin_audit FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON admin_audit
    USING (organization_id = current_organization_id()) WITH CHECK (organization_id = current_organization_id());
GRANT SELECT, INSERT ON admin_audit TO cloudscan_app;

-- Organizations after a slug (keyset), for platform admins: the only read across organizations.
CREATE FUNCTION admin_list_organizations(after_slug text, max_rows integer)
RETURNS SETOF organizations
LANGUAGE sql SECURITY DEFINER STABLE
AS $$
    SELECT * FROM organizations WHERE slug > coalesce(after_slug, '') ORDER BY slug LIMIT max_rows
$$;

-- An organization's id by its slug (operators name organizations by slug).
CREATE FUNCTION admin_organization_id(org_slug text) RETURNS uuid
LANGUAGE sql SECURITY DEFINER STABLE
AS $$ SELECT id FROM organizations WHERE slug = org_slug $$;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['admin_list_organizations(text, integer)', 'admin_organization_id(text)'] LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO cloudscan_maintenance', f);
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', f, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO cloudscan_app', f);
    END LOOP;
END
$$;
GRANT SELECT ON organizations TO cloudscan_maintenance;
