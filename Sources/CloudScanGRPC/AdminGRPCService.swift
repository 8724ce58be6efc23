import CloudScanAuth
import CloudScanCore
import CloudScanService
import Foundation
import GRPCCore
import SwiftProtobuf

/// `cloudscan.v1.AdminService`: organizations (platform admins) and the caller's organization's
/// projects (its admins change them, members read them), over the same service layer, audit
/// trail and error mapping as the HTTP administration API.
public struct AdminGRPCService: Cloudscan_V1_AdminService.ServiceProtocol {
    let scans: ScanGRPCService
    let policy: AdminPolicy

    public init(scans: ScanGRPCService, policy: AdminPolicy = AdminPolicy()) {
        self.scans = scans
        self.policy = policy
    }

    var admin: AdminService { scans.service.admin }

    func platformAdmin(_ caller: Caller) throws {
        guard policy.isPlatformAdmin(caller) else {
            throw RPCError(code: .permissionDenied, message: "requires the \(policy.platformAdminRole) role")
        }
    }

    func organizationAdmin(_ caller: Caller) throws {
        guard policy.isOrganizationAdmin(caller) else {
            throw RPCError(
                code: .permissionDenied,
                message: "requires the \(policy.organizationAdminRole) role of the organization")
        }
    }

    static func actor(_ caller: Caller) -> AdminActor { AdminActor(subject: caller.subject, via: "grpc") }

    static func uuid(_ text: String, _ what: String) throws -> UUID {
        guard let id = UUID(uuidString: text) else {
            throw ScanServiceError(code: .notFound, message: "no such \(what)")
        }
        return id
    }

    static func pageSize(_ size: Int32) -> Int { size == 0 ? 100 : Int(size) }

    static func options(_ text: String) throws -> JSONValue? {
        if text.isEmpty { return nil }
        guard let value = try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)) else {
            throw ScanServiceError.invalidArgument(field: "scanner_options_json", "not JSON")
        }
        return value
    }

    public func createOrganization(
        request: ServerRequest<Cloudscan_V1_CreateOrganizationRequest>, context: ServerContext
    ) async throws -> ServerResponse<Cloudscan_V1_Organization> {
        try await scans.unary("CreateOrganization", request, context) { caller, message in
            try platformAdmin(caller)
            return Self.message(
                try await admin.createOrganization(
                    CreateOrganizationRequest(
                        name: message.name, slug: message.slug,
                        retentionDays: message.hasRetentionDays ? Int(message.retentionDays) : nil,
                        concurrencyQuota: message.hasConcurrencyQuota ? Int(message.concurrencyQuota) : nil,
                        queuedScanCap: message.hasQueuedScanCap ? Int(message.queuedScanCap) : nil,
                        enabledScanTypes: message.enabledScanTypes.isEmpty ? nil : message.enabledScanTypes,
                        autoCreateProjects: message.hasAutoCreateProjects ? message.autoCreateProjects : nil),
                    actor: Self.actor(caller)))
        }
    }

    public func updateOrganization(
        request: ServerRequest<Cloudscan_V1_UpdateOrganizationRequest>, context: ServerContext
    ) async throws -> ServerResponse<Cloudscan_V1_Organization> {
        try await scans.unary("UpdateOrganization", request, context) { caller, message in
            try platformAdmin(caller)
            return Self.message(
                try await admin.updateOrganization(
                    id: try Self.uuid(message.id, "organization"),
                    UpdateOrganizationRequest(
                        name: message.hasName ? message.name : nil,
                        retentionDays: message.hasRetentionDays ? Int(message.retentionDays) : nil,
                        concurrencyQuota: message.hasConcurrencyQuota ? Int(message.concurrencyQuota) : nil,
                        queuedScanCap: message.hasQueuedScanCap ? Int(message.queuedScanCap) : nil,
                        enabledScanTypes: message.enabledScanTypes.isEmpty ? nil : message.enabledScanTypes,
                        autoCreateProjects: message.hasAutoCreateProjects ? message.autoCreateProjects : nil,
                        disabled: message.hasDisabled ? message.disabled : nil),
                    actor: Self.actor(caller)))
        }
    }

    public func getOrganization(request: ServerRequest<Cloudscan_V1_GetOrganizationRequest>, context: ServerContext)
        async throws -> ServerResponse<Cloudscan_V1_Organization>
    {
        try await scans.unary("GetOrganization", request, context) { caller, message in
            if message.id.isEmpty { return Self.message(try await admin.getOrganization(id: caller.organizationID)) }
            let id = try Self.uuid(message.id, "organization")
            if id != caller.organizationID { try platformAdmin(caller) }
            return Self.message(try await admin.getOrganization(id: id))
        }
    }

    public func listOrganizations(
        request: ServerRequest<Cloudscan_V1_ListOrganizationsRequest>, context: ServerContext
    ) async throws -> ServerResponse<Cloudscan_V1_ListOrganizationsResponse> {
        try await scans.unary("ListOrganizations", request, context) { caller, message in
            try platformAdmin(caller)
            let (items, next) = try await admin.listOrganizations(
                after: message.cursor.isEmpty ? nil : message.cursor, pageSize: Self.pageSize(message.pageSize))
            var response = Cloudscan_V1_ListOrganizationsResponse()
            response.organizations = items.map(Self.message)
            response.nextCursor = next ?? ""
            return response
        }
    }

    public func createProject(request: ServerRequest<Cloudscan_V1_CreateProjectRequest>, context: ServerContext)
        async throws -> ServerResponse<Cloudscan_V1_Project>
    {
        try await scans.unary("CreateProject", request, context) { caller, message in
            try organizationAdmin(caller)
            return Self.message(
                try await admin.createProject(
                    organizationID: caller.organizationID,
                    CreateProjectRequest(
                        name: message.name, externalKey: message.externalKey,
                        defaultScanTypes: message.defaultScanTypes.isEmpty ? nil : message.defaultScanTypes,
                        scannerOptions: try Self.options(message.scannerOptionsJson),
                        timeoutSeconds: message.hasTimeoutSeconds ? Int(message.timeoutSeconds) : nil),
                    actor: Self.actor(caller)))
        }
    }

    public func updateProject(request: ServerRequest<Cloudscan_V1_UpdateProjectRequest>, context: ServerContext)
        async throws -> ServerResponse<Cloudscan_V1_Project>
    {
        try await scans.unary("UpdateProject", request, context) { caller, message in
            try organizationAdmin(caller)
            return Self.message(
                try await admin.updateProject(
                    organizationID: caller.organizationID, id: try Self.uuid(message.id, "project"),
                    UpdateProjectRequest(
                        name: message.hasName ? message.name : nil,
                        externalKey: message.hasExternalKey ? message.externalKey : nil,
                        defaultScanTypes: message.defaultScanTypes.isEmpty ? nil : message.defaultScanTypes,
                        scannerOptions: message.hasScannerOptionsJson
                            ? try Self.options(message.scannerOptionsJson) ?? .object([:]) : nil,
                        timeoutSeconds: message.hasTimeoutSeconds ? Int(message.timeoutSeconds) : nil),
                    actor: Self.actor(caller)))
        }
    }

    public func getProject(request: ServerRequest<Cloudscan_V1_GetProjectRequest>, context: ServerContext)
        async throws -> ServerResponse<Cloudscan_V1_Project>
    {
        try await scans.unary("GetProject", request, context) { caller, message in
            Self.message(
                try await admin.getProject(
                    organizationID: caller.organizationID, id: try Self.uuid(message.id, "project")))
        }
    }

    public func listProjects(request: ServerRequest<Cloudscan_V1_ListProjectsRequest>, context: ServerContext)
        async throws -> ServerResponse<Cloudscan_V1_ListProjectsResponse>
    {
        try await scans.unary("ListProjects", request, context) { caller, message in
            let (items, next) = try await admin.listProjects(
                organizationID: caller.organizationID, includeArchived: message.includeArchived,
                after: message.cursor.isEmpty ? nil : message.cursor, pageSize: Self.pageSize(message.pageSize))
            var response = Cloudscan_V1_ListProjectsResponse()
            response.projects = items.map(Self.message)
            response.nextCursor = next ?? ""
            return response
        }
    }

    public func archiveProject(request: ServerRequest<Cloudscan_V1_ArchiveProjectRequest>, context: ServerContext)
        async throws -> ServerResponse<Cloudscan_V1_Project>
    {
        try await scans.unary("ArchiveProject", request, context) { caller, message in
            try organizationAdmin(caller)
            return Self.message(
                try await admin.archiveProject(
                    organizationID: caller.organizationID, id: try Self.uuid(message.id, "project"),
                    actor: Self.actor(caller)))
        }
    }

    static func message(_ item: Organization) -> Cloudscan_V1_Organization {
        var out = Cloudscan_V1_Organization()
        out.id = item.id.uuidString.lowercased()
        out.slug = item.slug
        out.name = item.name
        out.retentionDays = Int32(clamping: item.retentionDays)
        out.concurrencyQuota = Int32(clamping: item.concurrencyQuota)
        out.queuedScanCap = Int32(clamping: item.queuedScanCap)
        out.enabledScanTypes = item.enabledScanTypes
        out.autoCreateProjects = item.autoCreateProjects
        out.disabled = item.disabled
        out.createdAt = Google_Protobuf_Timestamp(date: item.createdAt)
        out.updatedAt = Google_Protobuf_Timestamp(date: item.updatedAt)
        return out
    }

    static func message(_ item: Project) -> Cloudscan_V1_Project {
        var out = Cloudscan_V1_Project()
        out.id = item.id.uuidString.lowercased()
        out.organizationID = item.organizationID.uuidString.lowercased()
        out.name = item.name
        out.externalKey = item.externalKey
        out.defaultScanTypes = item.defaultScanTypes
        out.scannerOptionsJson = item.scannerOptions.jsonText
        out.timeoutSeconds = Int32(clamping: item.timeoutSeconds)
        out.archived = item.archived
        out.createdAt = Google_Protobuf_Timestamp(date: item.createdAt)
        out.updatedAt = Google_Protobuf_Timestamp(date: item.updatedAt)
        return out
    }
}
