DROP FUNCTION IF EXISTS admin_organization_id(text);
DROP FUNCTION IF EXISTS admin_list_organizations(text, integer);
DROP TABLE IF EXISTS admin_audit;
ALTER TABLE organizations DROP COLUMN IF EXISTS auto_create_projects;
