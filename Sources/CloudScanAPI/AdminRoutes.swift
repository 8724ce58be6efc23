import CloudScanAuth
import CloudScanCore
import CloudScanService
import Foundation
import HTTPTypes
import Hummingbird

/// The administration API: organizations (platform admins) under `/api/v1/admin/organizations`,
/// the caller's own organization (`/api/v1/organization`, read-only) and its audit trail, and
/// projects (`/api/v1/projects`: members read, the organization's admins change).
extension ScanAPI {
    func addAdminRoutes(to router: Router<APIRequestContext>) {
        let organizations = router.group("/api/v1/admin/organizations")
        organizations.post { request, context in
            let caller = try await platformAdmin(request, context)
            let body = try await AdminBody(request)
            let create = CreateOrganizationRequest(
                name: try body.string("name", required: true) ?? "",
                slug: try body.string("slug", required: true) ?? "",
                retentionDays: try body.integer("retention_days"),
                concurrencyQuota: try body.integer("concurrency_quota"),
                queuedScanCap: try body.integer("queued_scan_cap"),
                enabledScanTypes: try body.strings("enabled_scan_types"),
                autoCreateProjects: try body.bool("auto_create_projects"))
            try body.rejectUnknown(Self.organizationCreateFields)
            let created = try await mapped {
                try await service.admin.createOrganization(create, actor: .init(subject: caller.subject, via: "http"))
            }
            var response = Self.json(created.json, status: .created)
            response.headers[.location] = "/api/v1/admin/organizations/\(created.id.uuidString.lowercased())"
            return response
        }
        organizations.get { request, context in
            _ = try await platformAdmin(request, context)
            let (size, cursor) = try Self.page(request)
            let (items, next) = try await mapped {
                try await service.admin.listOrganizations(after: cursor, pageSize: size)
            }
            return Self.json(
                .object(["items": .array(items.map(\.json)), "next_cursor": next.map { .string($0) } ?? .null]))
        }
        organizations.get("{id}") { request, context in
            _ = try await platformAdmin(request, context)
            let id = try Self.uuid(context, "organization")
            return Self.json(try await mapped { try await service.admin.getOrganization(id: id) }.json)
        }
        organizations.patch("{id}") { request, context in
            let caller = try await platformAdmin(request, context)
            let id = try Self.uuid(context, "organization")
            let body = try await AdminBody(request)
            let update = UpdateOrganizationRequest(
                name: try body.string("name"), retentionDays: try body.integer("retention_days"),
                concurrencyQuota: try body.integer("concurrency_quota"),
                queuedScanCap: try body.integer("queued_scan_cap"),
                enabledScanTypes: try body.strings("enabled_scan_types"),
                autoCreateProjects: try body.bool("auto_create_projects"), disabled: try body.bool("disabled"))
            try body.rejectUnknown(Self.organizationUpdateFields)
            let updated = try await mapped {
                try await service.admin.updateOrganization(
                    id: id, update, actor: .init(subject: caller.subject, via: "http"))
            }
            return Self.json(updated.json)
        }
        organizations.get("{id}/audit") { request, context in
            _ = try await platformAdmin(request, context)
            let id = try Self.uuid(context, "organization")
            let entries = try await mapped { try await service.admin.audit(organizationID: id) }
            return Self.json(.object(["items": .array(entries.map(\.json))]))
        }

        router.get("/api/v1/organization") { request, context in
            let caller = try await authenticator.authenticate(request, context)
            let organization = try await mapped { try await service.admin.getOrganization(id: caller.organizationID) }
            return Self.json(organization.json)
        }
        router.get("/api/v1/organization/audit") { request, context in
            let caller = try await organizationAdmin(request, context)
            let entries = try await mapped { try await service.admin.audit(organizationID: caller.organizationID) }
            return Self.json(.object(["items": .array(entries.map(\.json))]))
        }

        let projects = router.group("/api/v1/projects")
        projects.post { request, context in
            let caller = try await organizationAdmin(request, context)
            let body = try await AdminBody(request)
            let create = CreateProjectRequest(
                name: try body.string("name", required: true) ?? "",
                externalKey: try body.string("external_key", required: true) ?? "",
                defaultScanTypes: try body.strings("default_scan_types"),
                scannerOptions: try body.object("scanner_options"), timeoutSeconds: try body.integer("timeout_seconds"))
            try body.rejectUnknown(Self.projectFields)
            let created = try await mapped {
                try await service.admin.createProject(
                    organizationID: caller.organizationID, create, actor: .init(subject: caller.subject, via: "http"))
            }
            var response = Self.json(created.json, status: .created)
            response.headers[.location] = "/api/v1/projects/\(created.id.uuidString.lowercased())"
            return response
        }
        projects.get { request, context in
            let caller = try await authenticator.authenticate(request, context)
            let (size, cursor) = try Self.page(request)
            var archived = false
            if let text = request.uri.queryParameters["include_archived"] {
                guard text == "true" || text == "false" else {
                    throw Problem(
                        .badRequest, title: "Invalid request", detail: "true or false", field: "include_archived")
                }
                archived = text == "true"
            }
            let (items, next) = try await mapped {
                try await service.admin.listProjects(
                    organizationID: caller.organizationID, includeArchived: archived, after: cursor, pageSize: size)
            }
            return Self.json(
                .object(["items": .array(items.map(\.json)), "next_cursor": next.map { .string($0) } ?? .null]))
        }
        projects.get("{id}") { request, context in
            let caller = try await authenticator.authenticate(request, context)
            let id = try Self.uuid(context, "project")
            return Self.json(
                try await mapped { try await service.admin.getProject(organizationID: caller.organizationID, id: id) }
                    .json)
        }
        projects.patch("{id}") { request, context in
            let caller = try await organizationAdmin(request, context)
            let id = try Self.uuid(context, "project")
            let body = try await AdminBody(request)
            let update = UpdateProjectRequest(
                name: try body.string("name"), externalKey: try body.string("external_key"),
                defaultScanTypes: try body.strings("default_scan_types"),
                scannerOptions: try body.object("scanner_options"), timeoutSeconds: try body.integer("timeout_seconds"))
            try body.rejectUnknown(Self.projectFields)
            let updated = try await mapped {
                try await service.admin.updateProject(
                    organizationID: caller.organizationID, id: id, update,
                    actor: .init(subject: caller.subject, via: "http"))
            }
            return Self.json(updated.json)
        }
        projects.post("{id}/archive") { request, context in
            let caller = try await organizationAdmin(request, context)
            let id = try Self.uuid(context, "project")
            let archived = try await mapped {
                try await service.admin.archiveProject(
                    organizationID: caller.organizationID, id: id, actor: .init(subject: caller.subject, via: "http"))
            }
            return Self.json(archived.json)
        }
    }

    static let organizationCreateFields: Set<String> = [
        "name", "slug", "retention_days", "concurrency_quota", "queued_scan_cap", "enabled_scan_types",
        "auto_create_projects",
    ]
    static let organizationUpdateFields: Set<String> = [
        "name", "retention_days", "concurrency_quota", "queued_scan_cap", "enabled_scan_types",
        "auto_create_projects", "disabled",
    ]
    static let projectFields: Set<String> = [
        "name", "external_key", "default_scan_types", "scanner_options", "timeout_seconds",
    ]

    static let adminPaths: [(RouterPath, [HTTPRequest.Method])] = [
        ("/api/v1/admin/organizations", [.get, .post]), ("/api/v1/admin/organizations/{id}", [.get, .patch]),
        ("/api/v1/admin/organizations/{id}/audit", [.get]), ("/api/v1/organization", [.get]),
        ("/api/v1/organization/audit", [.get]), ("/api/v1/projects", [.get, .post]),
        ("/api/v1/projects/{id}", [.get, .patch]), ("/api/v1/projects/{id}/archive", [.post]),
    ]

    func platformAdmin(_ request: Request, _ context: APIRequestContext) async throws -> Caller {
        let caller = try await authenticator.authenticate(request, context)
        guard policy.isPlatformAdmin(caller) else {
            throw Problem(
                .forbidden, title: "Forbidden", detail: "requires the \(policy.platformAdminRole) role")
        }
        return caller
    }

    func organizationAdmin(_ request: Request, _ context: APIRequestContext) async throws -> Caller {
        let caller = try await authenticator.authenticate(request, context)
        guard policy.isOrganizationAdmin(caller) else {
            throw Problem(
                .forbidden, title: "Forbidden",
                detail: "requires the \(policy.organizationAdminRole) role of the organization")
        }
        return caller
    }

    static func uuid(_ context: APIRequestContext, _ what: String) throws -> UUID {
        guard let text = context.parameters.get("id"), let id = UUID(uuidString: text) else {
            throw Problem(.notFound, title: "Not found", detail: "no such \(what)")
        }
        return id
    }

    /// `page_size` (default 100) and `cursor` of a list.
    static func page(_ request: Request) throws -> (Int, String?) {
        let query = request.uri.queryParameters
        var size = 100
        if let text = query["page_size"] {
            guard let value = Int(String(text)), AdminService.Limits.pageSize.contains(value) else {
                throw Problem(.badRequest, title: "Invalid request", detail: "1 to 500", field: "page_size")
            }
            size = value
        }
        return (size, query["cursor"].map(String.init))
    }

    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(string: value.jsonText)))
    }
}

/// A JSON object body read field by field, each error naming the field; unknown fields refused.
struct AdminBody {
    let fields: [String: JSONValue]

    init(_ request: Request) async throws {
        let buffer = try await ScanAPI.body(of: request)
        guard let value = try? JSONDecoder().decode(JSONValue.self, from: Data(buffer: buffer)),
            case .object(let fields) = value
        else {
            throw Problem(.badRequest, title: "Invalid request", detail: "the body is not a JSON object", field: "body")
        }
        self.fields = fields
    }

    private func invalid(_ field: String, _ detail: String) -> Problem {
        Problem(.badRequest, title: "Invalid request", detail: "\(field) \(detail)", field: field)
    }

    func string(_ field: String, required: Bool = false) throws -> String? {
        switch fields[field] {
        case nil:
            if required { throw invalid(field, "is required") }
            return nil
        case .null?: throw invalid(field, "must not be null (leave it out instead)")
        case .string(let text)?: return text
        default: throw invalid(field, "must be a string")
        }
    }

    func integer(_ field: String) throws -> Int? {
        switch fields[field] {
        case nil: return nil
        case .null?: throw invalid(field, "must not be null (leave it out instead)")
        case .int(let value)?: return value
        case .double(let value)?:
            guard let exact = Int(exactly: value) else { throw invalid(field, "must be an integer") }
            return exact
        default: throw invalid(field, "must be an integer")
        }
    }

    func bool(_ field: String) throws -> Bool? {
        switch fields[field] {
        case nil: return nil
        case .null?: throw invalid(field, "must not be null (leave it out instead)")
        case .bool(let value)?: return value
        default: throw invalid(field, "must be true or false")
        }
    }

    func strings(_ field: String) throws -> [String]? {
        switch fields[field] {
        case nil: return nil
        case .null?: throw invalid(field, "must not be null (leave it out instead)")
        case .array(let values)?:
            return try values.map {
                guard case .string(let text) = $0 else { throw invalid(field, "must be an array of strings") }
                return text
            }
        default: throw invalid(field, "must be an array of strings")
        }
    }

    func object(_ field: String) throws -> JSONValue? {
        switch fields[field] {
        case nil: return nil
        case .null?: throw invalid(field, "must not be null (leave it out instead)")
        case .object(let value)?: return .object(value)
        default: throw invalid(field, "must be an object")
        }
    }

    /// A field the route does not read is a mistake worth naming (a typo would otherwise be ignored).
    func rejectUnknown(_ known: Set<String>) throws {
        if let unknown = fields.keys.sorted().first(where: { !known.contains($0) }) {
            throw invalid(unknown, "is not a field of this request")
        }
    }
}
