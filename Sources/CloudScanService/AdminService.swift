import CloudScanCore
import CloudScanPostgres
import Foundation
import Logging

/// A tenant as the administration API shows it.
public struct Organization: Sendable, Hashable {
    public var id: UUID
    public var slug: String
    public var name: String
    public var retentionDays: Int
    public var concurrencyQuota: Int
    public var queuedScanCap: Int
    public var enabledScanTypes: [String]
    public var autoCreateProjects: Bool
    public var disabledAt: Date?
    public var createdAt: Date
    public var updatedAt: Date

    public var disabled: Bool { disabledAt != nil }

    /// The JSON the APIs, the CLI and the audit trail show.
    public var json: JSONValue {
        .object([
            "id": .string(id.uuidString.lowercased()), "slug": .string(slug), "name": .string(name),
            "retention_days": .int(retentionDays), "concurrency_quota": .int(concurrencyQuota),
            "queued_scan_cap": .int(queuedScanCap), "enabled_scan_types": .array(enabledScanTypes.map { .string($0) }),
            "auto_create_projects": .bool(autoCreateProjects), "disabled": .bool(disabled),
            "disabled_at": disabledAt.map { .string(RFC3339.string(from: $0)) } ?? .null,
            "created_at": .string(RFC3339.string(from: createdAt)),
            "updated_at": .string(RFC3339.string(from: updatedAt)),
        ])
    }
}

/// A gateway's project within an organization.
public struct Project: Sendable, Hashable {
    public var id: UUID
    public var organizationID: UUID
    public var name: String
    public var externalKey: String
    public var defaultScanTypes: [String]
    public var scannerOptions: JSONValue
    public var timeoutSeconds: Int
    public var archivedAt: Date?
    public var createdAt: Date
    public var updatedAt: Date

    public var archived: Bool { archivedAt != nil }

    public var json: JSONValue {
        .object([
            "id": .string(id.uuidString.lowercased()),
            "organization_id": .string(organizationID.uuidString.lowercased()),
            "name": .string(name), "external_key": .string(externalKey),
            "default_scan_types": .array(defaultScanTypes.map { .string($0) }), "scanner_options": scannerOptions,
            "timeout_seconds": .int(timeoutSeconds), "archived": .bool(archived),
            "archived_at": archivedAt.map { .string(RFC3339.string(from: $0)) } ?? .null,
            "created_at": .string(RFC3339.string(from: createdAt)),
            "updated_at": .string(RFC3339.string(from: updatedAt)),
        ])
    }
}

/// Who made an administrative change, and through what (`http`, `grpc`, `cli`).
public struct AdminActor: Sendable, Hashable {
    public var subject: String
    public var via: String
    public init(subject: String, via: String) {
        self.subject = subject
        self.via = via
    }
}

/// One audited change.
public struct AuditEntry: Sendable, Hashable {
    public var id: Int64
    public var organizationID: UUID
    public var actor: String
    public var via: String
    public var action: String
    public var entityType: String
    public var entityID: UUID
    public var before: JSONValue?
    public var after: JSONValue?
    public var at: Date

    public var json: JSONValue {
        .object([
            "id": .int(Int(id)), "organization_id": .string(organizationID.uuidString.lowercased()),
            "actor": .string(actor), "via": .string(via), "action": .string(action),
            "entity_type": .string(entityType), "entity_id": .string(entityID.uuidString.lowercased()),
            "before": before ?? .null, "after": after ?? .null, "at": .string(RFC3339.string(from: at)),
        ])
    }
}

/// The settings of an organization to create; unset ones take the defaults.
public struct CreateOrganizationRequest: Sendable {
    public var id: UUID?
    public var name: String
    public var slug: String
    public var retentionDays: Int?
    public var concurrencyQuota: Int?
    public var queuedScanCap: Int?
    public var enabledScanTypes: [String]?
    public var autoCreateProjects: Bool?

    public init(
        id: UUID? = nil, name: String, slug: String, retentionDays: Int? = nil, concurrencyQuota: Int? = nil,
        queuedScanCap: Int? = nil, enabledScanTypes: [String]? = nil, autoCreateProjects: Bool? = nil
    ) {
        self.id = id
        self.name = name
        self.slug = slug
        self.retentionDays = retentionDays
        self.concurrencyQuota = concurrencyQuota
        self.queuedScanCap = queuedScanCap
        self.enabledScanTypes = enabledScanTypes
        self.autoCreateProjects = autoCreateProjects
    }
}

/// The settings to change; nil leaves one as it is. `disabled` stops new scans (data untouched).
public struct UpdateOrganizationRequest: Sendable {
    public var name: String?
    public var retentionDays: Int?
    public var concurrencyQuota: Int?
    public var queuedScanCap: Int?
    public var enabledScanTypes: [String]?
    public var autoCreateProjects: Bool?
    public var disabled: Bool?

    public init(
        name: String? = nil, retentionDays: Int? = nil, concurrencyQuota: Int? = nil, queuedScanCap: Int? = nil,
        enabledScanTypes: [String]? = nil, autoCreateProjects: Bool? = nil, disabled: Bool? = nil
    ) {
        self.name = name
        self.retentionDays = retentionDays
        self.concurrencyQuota = concurrencyQuota
        self.queuedScanCap = queuedScanCap
        self.enabledScanTypes = enabledScanTypes
        self.autoCreateProjects = autoCreateProjects
        self.disabled = disabled
    }

    public var isEmpty: Bool {
        name == nil && retentionDays == nil && concurrencyQuota == nil && queuedScanCap == nil
            && enabledScanTypes == nil && autoCreateProjects == nil && disabled == nil
    }
}

public struct CreateProjectRequest: Sendable {
    public var name: String
    public var externalKey: String
    public var defaultScanTypes: [String]?
    public var scannerOptions: JSONValue?
    public var timeoutSeconds: Int?

    public init(
        name: String, externalKey: String, defaultScanTypes: [String]? = nil, scannerOptions: JSONValue? = nil,
        timeoutSeconds: Int? = nil
    ) {
        self.name = name
        self.externalKey = externalKey
        self.defaultScanTypes = defaultScanTypes
        self.scannerOptions = scannerOptions
        self.timeoutSeconds = timeoutSeconds
    }
}

public struct UpdateProjectRequest: Sendable {
    public var name: String?
    public var externalKey: String?
    public var defaultScanTypes: [String]?
    public var scannerOptions: JSONValue?
    public var timeoutSeconds: Int?

    public init(
        name: String? = nil, externalKey: String? = nil, defaultScanTypes: [String]? = nil,
        scannerOptions: JSONValue? = nil, timeoutSeconds: Int? = nil
    ) {
        self.name = name
        self.externalKey = externalKey
        self.defaultScanTypes = defaultScanTypes
        self.scannerOptions = scannerOptions
        self.timeoutSeconds = timeoutSeconds
    }

    public var isEmpty: Bool {
        name == nil && externalKey == nil && defaultScanTypes == nil && scannerOptions == nil && timeoutSeconds == nil
    }
}

/// Organizations (platform admins) and their projects (an organization's admins), every change
/// audited in the same transaction (`admin_audit`: who, what, when, before/after). Each call runs
/// under the organization's row-level security; listing organizations is the one read across
/// organizations (`admin_list_organizations`, a SECURITY DEFINER function).
public struct AdminService: Sendable {
    public enum Limits {
        public static let retentionDays = 1...3650
        public static let concurrencyQuota = 0...100_000
        public static let queuedScanCap = 0...10_000_000
        public static let timeoutSeconds = 30...86400
        public static let scannerOptionsBytes = 16 * 1024
        public static let pageSize = 1...500
    }

    let client: PostgresClient
    let logger: Logger
    /// Whether a new organization creates unknown projects on first use unless told otherwise
    /// (`cloudscan dev` turns it on; production leaves it off).
    public var autoCreateProjectsDefault: Bool

    public init(client: PostgresClient, logger: Logger, autoCreateProjectsDefault: Bool = false) {
        self.client = client
        self.logger = logger
        self.autoCreateProjectsDefault = autoCreateProjectsDefault
    }

    // MARK: Organizations

    static let organizationColumns = """
        id, slug, name, retention_days, concurrency_quota, queued_scan_cap, enabled_scan_types, auto_create_projects,
        disabled_at, created_at, updated_at
        """

    static func organization(_ row: PostgresRow) throws -> Organization {
        Organization(
            id: try row.decode(UUID.self, at: 0), slug: try row.decode(String.self, at: 1),
            name: try row.decode(String.self, at: 2), retentionDays: try row.decode(Int.self, at: 3),
            concurrencyQuota: try row.decode(Int.self, at: 4), queuedScanCap: try row.decode(Int.self, at: 5),
            enabledScanTypes: try row.decode([String].self, at: 6),
            autoCreateProjects: try row.decode(Bool.self, at: 7),
            disabledAt: try row.decode(Date?.self, at: 8), createdAt: try row.decode(Date.self, at: 9),
            updatedAt: try row.decode(Date.self, at: 10))
    }

    public func createOrganization(_ request: CreateOrganizationRequest, actor: AdminActor) async throws
        -> Organization
    {
        try Self.checkName(request.name)
        guard request.slug.range(of: #"^[a-z0-9][a-z0-9-]{0,62}$"#, options: .regularExpression) != nil else {
            throw ScanServiceError.invalidArgument(
                field: "slug", "1-63 characters: lowercase letters, digits and '-', not starting with '-'")
        }
        let retention = try Self.check(request.retentionDays ?? 90, Limits.retentionDays, "retention_days")
        let quota = try Self.check(request.concurrencyQuota ?? 10, Limits.concurrencyQuota, "concurrency_quota")
        let cap = try Self.check(request.queuedScanCap ?? 1000, Limits.queuedScanCap, "queued_scan_cap")
        let types = try Self.checkScanTypes(
            request.enabledScanTypes ?? ScanType.allCases.map(\.rawValue), field: "enabled_scan_types")
        let id = request.id ?? UUID()
        guard id.uuidString != "00000000-0000-0000-0000-000000000000" else {
            throw ScanServiceError.invalidArgument(field: "id", "the nil UUID is not an organization id")
        }
        return try await client.withTransaction(organizationID: id) { c in
            let rows: PostgresRows
            do {
                rows = try await c.query(
                    """
                    INSERT INTO organizations (id, slug, name, retention_days, concurrency_quota, queued_scan_cap,
                                               enabled_scan_types, auto_create_projects)
                    VALUES (\(id), \(request.slug), \(request.name), \(Int32(retention)), \(Int32(quota)), \(Int32(cap)),
                            \(types), \(request.autoCreateProjects ?? autoCreateProjectsDefault))
                    RETURNING \(unescaped: Self.organizationColumns)
                    """)
            } catch let error as PostgresError where error.sqlState == "23505" {
                throw ScanServiceError(
                    code: .conflict, message: "an organization with slug '\(request.slug)' (or this id) exists",
                    field: "slug")
            }
            let created = try Self.organization(try rows.single())
            try await Self.audit(
                c, organizationID: id, actor: actor, action: "organization.create", entityType: "organization",
                entityID: id, before: nil, after: created.json)
            return created
        }
    }

    public func updateOrganization(id: UUID, _ request: UpdateOrganizationRequest, actor: AdminActor) async throws
        -> Organization
    {
        if let name = request.name { try Self.checkName(name) }
        let retention = try request.retentionDays.map { try Self.check($0, Limits.retentionDays, "retention_days") }
        let quota = try request.concurrencyQuota.map {
            try Self.check($0, Limits.concurrencyQuota, "concurrency_quota")
        }
        let cap = try request.queuedScanCap.map { try Self.check($0, Limits.queuedScanCap, "queued_scan_cap") }
        let types = try request.enabledScanTypes.map { try Self.checkScanTypes($0, field: "enabled_scan_types") }
        return try await client.withTransaction(organizationID: id) { c in
            guard
                let beforeRow = try await c.query(
                    "SELECT \(unescaped: Self.organizationColumns) FROM organizations WHERE id = \(id) FOR UPDATE"
                ).first
            else { throw ScanServiceError(code: .notFound, message: "no organization \(id)") }
            let before = try Self.organization(beforeRow)
            if request.isEmpty { return before }
            let row = try await c.query(
                """
                UPDATE organizations SET
                    name = coalesce(\(request.name), name),
                    retention_days = coalesce(\(retention.map(Int32.init))::integer, retention_days),
                    concurrency_quota = coalesce(\(quota.map(Int32.init))::integer, concurrency_quota),
                    queued_scan_cap = coalesce(\(cap.map(Int32.init))::integer, queued_scan_cap),
                    enabled_scan_types = coalesce(\(types)::text[], enabled_scan_types),
                    auto_create_projects = coalesce(\(request.autoCreateProjects)::boolean, auto_create_projects),
                    disabled_at = CASE WHEN \(request.disabled)::boolean IS NULL THEN disabled_at
                                       WHEN \(request.disabled)::boolean THEN coalesce(disabled_at, now())
                                       ELSE NULL END,
                    updated_at = now()
                WHERE id = \(id)
                RETURNING \(unescaped: Self.organizationColumns)
                """
            ).single()
            let after = try Self.organization(row)
            var action = "organization.update"
            if request.disabled == true, !before.disabled { action = "organization.disable" }
            if request.disabled == false, before.disabled { action = "organization.enable" }
            try await Self.audit(
                c, organizationID: id, actor: actor, action: action, entityType: "organization", entityID: id,
                before: before.json, after: after.json)
            return after
        }
    }

    public func getOrganization(id: UUID) async throws -> Organization {
        try await client.withTransaction(organizationID: id) { c in
            guard
                let row = try await c.query(
                    "SELECT \(unescaped: Self.organizationColumns) FROM organizations WHERE id = \(id)"
                ).first
            else { throw ScanServiceError(code: .notFound, message: "no organization \(id)") }
            return try Self.organization(row)
        }
    }

    /// Organizations in slug order after `after` (a slug), and the cursor of the next page.
    public func listOrganizations(after: String?, pageSize: Int) async throws -> ([Organization], String?) {
        let size = try Self.check(pageSize, Limits.pageSize, "page_size")
        let rows = try await client.query(
            """
            SELECT \(unescaped: Self.organizationColumns) FROM admin_list_organizations(\(after), \(Int32(size + 1)))
            """)
        var organizations = try rows.map(Self.organization)
        var next: String?
        if organizations.count > size {
            organizations.removeLast()
            next = organizations.last?.slug
        }
        return (organizations, next)
    }

    // MARK: Projects

    static let projectColumns = """
        id, organization_id, name, external_key, default_scan_types, scanner_options, timeout_seconds, archived_at,
        created_at, updated_at
        """

    static func project(_ row: PostgresRow) throws -> Project {
        Project(
            id: try row.decode(UUID.self, at: 0), organizationID: try row.decode(UUID.self, at: 1),
            name: try row.decode(String.self, at: 2), externalKey: try row.decode(String.self, at: 3),
            defaultScanTypes: try row.decode([String].self, at: 4),
            scannerOptions: try row.decode(PostgresJSONB.self, at: 5).decode(JSONValue.self),
            timeoutSeconds: try row.decode(Int.self, at: 6), archivedAt: try row.decode(Date?.self, at: 7),
            createdAt: try row.decode(Date.self, at: 8), updatedAt: try row.decode(Date.self, at: 9))
    }

    public func createProject(organizationID: UUID, _ request: CreateProjectRequest, actor: AdminActor) async throws
        -> Project
    {
        try Self.checkName(request.name)
        try Self.checkExternalKey(request.externalKey)
        let types = try Self.checkScanTypes(
            request.defaultScanTypes ?? ["sast", "secrets"], field: "default_scan_types")
        let options = try Self.checkOptions(request.scannerOptions ?? .object([:]))
        let timeout = try Self.check(request.timeoutSeconds ?? 1800, Limits.timeoutSeconds, "timeout_seconds")
        return try await client.withTransaction(organizationID: organizationID) { c in
            try await Self.requireOrganization(c, organizationID)
            let rows: PostgresRows
            do {
                rows = try await c.query(
                    """
                    INSERT INTO projects (organization_id, name, external_key, default_scan_types, scanner_options,
                                          timeout_seconds)
                    VALUES (\(organizationID), \(request.name), \(request.externalKey), \(types),
                            \(PostgresJSONB(text: options.jsonText)), \(Int32(timeout)))
                    RETURNING \(unescaped: Self.projectColumns)
                    """)
            } catch let error as PostgresError where error.sqlState == "23505" {
                throw ScanServiceError(
                    code: .conflict, message: "a project with external key '\(request.externalKey)' exists",
                    field: "external_key")
            }
            let created = try Self.project(try rows.single())
            try await Self.audit(
                c, organizationID: organizationID, actor: actor, action: "project.create", entityType: "project",
                entityID: created.id, before: nil, after: created.json)
            return created
        }
    }

    public func updateProject(organizationID: UUID, id: UUID, _ request: UpdateProjectRequest, actor: AdminActor)
        async throws -> Project
    {
        if let name = request.name { try Self.checkName(name) }
        if let key = request.externalKey { try Self.checkExternalKey(key) }
        let types = try request.defaultScanTypes.map { try Self.checkScanTypes($0, field: "default_scan_types") }
        let options = try request.scannerOptions.map { try Self.checkOptions($0) }
        let timeout = try request.timeoutSeconds.map { try Self.check($0, Limits.timeoutSeconds, "timeout_seconds") }
        return try await client.withTransaction(organizationID: organizationID) { c in
            let before = try await Self.lockedProject(c, id)
            if request.isEmpty { return before }
            let rows: PostgresRows
            do {
                rows = try await c.query(
                    """
                    UPDATE projects SET
                        name = coalesce(\(request.name), name),
                        external_key = coalesce(\(request.externalKey), external_key),
                        default_scan_types = coalesce(\(types)::text[], default_scan_types),
                        scanner_options = coalesce(\(options.map { PostgresJSONB(text: $0.jsonText) })::jsonb, scanner_options),
                        timeout_seconds = coalesce(\(timeout.map(Int32.init))::integer, timeout_seconds),
                        updated_at = now()
                    WHERE id = \(id)
                    RETURNING \(unescaped: Self.projectColumns)
                    """)
            } catch let error as PostgresError where error.sqlState == "23505" {
                throw ScanServiceError(
                    code: .conflict, message: "a project with external key '\(request.externalKey ?? "")' exists",
                    field: "external_key")
            }
            let after = try Self.project(try rows.single())
            try await Self.audit(
                c, organizationID: organizationID, actor: actor, action: "project.update", entityType: "project",
                entityID: id, before: before.json, after: after.json)
            return after
        }
    }

    /// Archives a project: no new scans name it (its key is refused), its scans and findings stay.
    public func archiveProject(organizationID: UUID, id: UUID, actor: AdminActor) async throws -> Project {
        try await client.withTransaction(organizationID: organizationID) { c in
            let before = try await Self.lockedProject(c, id)
            if before.archived { return before }
            let after = try Self.project(
                try await c.query(
                    """
                    UPDATE projects SET archived_at = now(), updated_at = now() WHERE id = \(id)
                    RETURNING \(unescaped: Self.projectColumns)
                    """
                ).single())
            try await Self.audit(
                c, organizationID: organizationID, actor: actor, action: "project.archive", entityType: "project",
                entityID: id, before: before.json, after: after.json)
            return after
        }
    }

    public func getProject(organizationID: UUID, id: UUID) async throws -> Project {
        try await client.withTransaction(organizationID: organizationID) { c in
            guard
                let row = try await c.query("SELECT \(unescaped: Self.projectColumns) FROM projects WHERE id = \(id)")
                    .first
            else { throw ScanServiceError(code: .notFound, message: "no project \(id)") }
            return try Self.project(row)
        }
    }

    /// The organization's projects by external key after `after`, archived ones only when asked.
    public func listProjects(organizationID: UUID, includeArchived: Bool, after: String?, pageSize: Int) async throws
        -> ([Project], String?)
    {
        let size = try Self.check(pageSize, Limits.pageSize, "page_size")
        return try await client.withTransaction(organizationID: organizationID) { c in
            var projects = try await c.query(
                """
                SELECT \(unescaped: Self.projectColumns) FROM projects
                WHERE external_key > coalesce(\(after), '') AND (\(includeArchived) OR archived_at IS NULL)
                ORDER BY external_key LIMIT \(Int32(size + 1))
                """
            ).map(Self.project)
            var next: String?
            if projects.count > size {
                projects.removeLast()
                next = projects.last?.externalKey
            }
            return (projects, next)
        }
    }

    /// The organization's audit trail, newest first.
    public func audit(organizationID: UUID, limit: Int = 100) async throws -> [AuditEntry] {
        try await client.withTransaction(organizationID: organizationID) { c in
            try await c.query(
                """
                SELECT id, organization_id, actor, via, action, entity_type, entity_id, before, after, at
                FROM admin_audit ORDER BY at DESC, id DESC LIMIT \(Int32(min(max(limit, 1), 1000)))
                """
            ).map { row in
                AuditEntry(
                    id: try row.decode(Int64.self, at: 0), organizationID: try row.decode(UUID.self, at: 1),
                    actor: try row.decode(String.self, at: 2), via: try row.decode(String.self, at: 3),
                    action: try row.decode(String.self, at: 4), entityType: try row.decode(String.self, at: 5),
                    entityID: try row.decode(UUID.self, at: 6),
                    before: try row.decode(PostgresJSONB?.self, at: 7).map { try $0.decode(JSONValue.self) },
                    after: try row.decode(PostgresJSONB?.self, at: 8).map { try $0.decode(JSONValue.self) },
                    at: try row.decode(Date.self, at: 9))
            }
        }
    }

    // MARK: Shared

    static func audit(
        _ c: PostgresConnection, organizationID: UUID, actor: AdminActor, action: String, entityType: String,
        entityID: UUID, before: JSONValue?, after: JSONValue?
    ) async throws {
        try await c.execute(
            """
            INSERT INTO admin_audit (organization_id, actor, via, action, entity_type, entity_id, before, after)
            VALUES (\(organizationID), \(String(actor.subject.prefix(300))), \(actor.via), \(action), \(entityType),
                    \(entityID), \(before.map { PostgresJSONB(text: $0.jsonText) }),
                    \(after.map { PostgresJSONB(text: $0.jsonText) }))
            """)
    }

    static func requireOrganization(_ c: PostgresConnection, _ id: UUID) async throws {
        guard try await c.query("SELECT 1 FROM organizations WHERE id = \(id)").first != nil else {
            throw ScanServiceError(code: .notFound, message: "no organization \(id)")
        }
    }

    static func lockedProject(_ c: PostgresConnection, _ id: UUID) async throws -> Project {
        guard
            let row = try await c.query(
                "SELECT \(unescaped: projectColumns) FROM projects WHERE id = \(id) FOR UPDATE"
            ).first
        else { throw ScanServiceError(code: .notFound, message: "no project \(id)") }
        return try project(row)
    }

    static func checkName(_ name: String) throws {
        let trimmed = name.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !trimmed.isEmpty, name.count <= 200, !name.unicodeScalars.contains(where: { $0.value < 0x20 }) else {
            throw ScanServiceError.invalidArgument(field: "name", "1-200 characters, no control characters")
        }
    }

    static func checkExternalKey(_ key: String) throws {
        guard !key.isEmpty, key.count <= 200, key == key.trimmingCharacters(in: .whitespaces),
            !key.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f })
        else {
            throw ScanServiceError.invalidArgument(
                field: "external_key", "1-200 characters, no control characters or surrounding spaces")
        }
    }

    static func check(_ value: Int, _ range: ClosedRange<Int>, _ field: String) throws -> Int {
        guard range.contains(value) else {
            throw ScanServiceError.invalidArgument(
                field: field, "must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return value
    }

    static func checkScanTypes(_ types: [String], field: String) throws -> [String] {
        guard !types.isEmpty else { throw ScanServiceError.invalidArgument(field: field, "at least one scan type") }
        var seen: [String] = []
        for type in types {
            guard ScanType(rawValue: type) != nil else {
                throw ScanServiceError.invalidArgument(
                    field: field,
                    "unknown scan type '\(type)' (one of \(ScanType.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            if !seen.contains(type) { seen.append(type) }
        }
        return seen
    }

    static func checkOptions(_ options: JSONValue) throws -> JSONValue {
        _ = try ScannerOptions(options)
        guard options.jsonText.utf8.count <= Limits.scannerOptionsBytes else {
            throw ScanServiceError.invalidArgument(
                field: "scanner_options", "at most \(Limits.scannerOptionsBytes / 1024) KiB")
        }
        return options
    }
}

extension ScanService {
    public var admin: AdminService {
        AdminService(client: client, logger: logger, autoCreateProjectsDefault: autoCreateProjectsDefault)
    }
}

extension AdminService {
    /// An organization named by id or slug.
    public func organizationID(_ reference: String) async throws -> UUID {
        if let id = UUID(uuidString: reference) { return id }
        guard
            let id = try await client.query("SELECT admin_organization_id(\(reference))").first?.decode(
                UUID?.self, at: 0)
        else { throw ScanServiceError(code: .notFound, message: "no organization with slug '\(reference)'") }
        return id
    }

    /// A project (id or external key) of an organization (id or slug): both ids.
    public func project(_ reference: String, of organization: String) async throws -> (UUID, UUID) {
        let organizationID = try await organizationID(organization)
        return (organizationID, try await projectID(organizationID: organizationID, reference))
    }

    /// A project of the organization named by id or external key.
    public func projectID(organizationID: UUID, _ reference: String) async throws -> UUID {
        if let id = UUID(uuidString: reference) { return id }
        return try await client.withTransaction(organizationID: organizationID) { c in
            guard
                let id = try await c.query("SELECT id FROM projects WHERE external_key = \(reference)").first?.decode(
                    UUID.self, at: 0)
            else { throw ScanServiceError(code: .notFound, message: "no project with external key '\(reference)'") }
            return id
        }
    }
}
