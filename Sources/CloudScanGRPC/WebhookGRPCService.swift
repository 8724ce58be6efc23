import CloudScanAuth
import CloudScanCore
import CloudScanService
import Foundation
import GRPCCore
import SwiftProtobuf

/// `cloudscan.v1.WebhookService`: webhook subscriptions over the same service layer as
/// `/api/v1/webhooks`, with the scan service's authentication and error mapping.
public struct WebhookGRPCService: Cloudscan_V1_WebhookService.ServiceProtocol {
    let scans: ScanGRPCService
    let policy: AdminPolicy

    public init(scans: ScanGRPCService, policy: AdminPolicy = AdminPolicy()) {
        self.scans = scans
        self.policy = policy
    }

    /// Managing webhooks takes the organization-admin role, as projects do.
    func organizationAdmin(_ caller: Caller) throws {
        guard policy.isOrganizationAdmin(caller) else {
            throw RPCError(
                code: .permissionDenied,
                message: "requires the \(policy.organizationAdminRole) role of the organization")
        }
    }

    public func createWebhook(request: ServerRequest<Cloudscan_V1_CreateWebhookRequest>, context: ServerContext)
        async throws -> ServerResponse<Cloudscan_V1_Webhook>
    {
        try await scans.unary("CreateWebhook", request, context) { caller, message in
            try organizationAdmin(caller)
            let created = try await scans.service.webhooks.create(
                organizationID: caller.organizationID,
                request: CreateWebhookRequest(
                    url: message.url, secret: message.secret.isEmpty ? nil : message.secret,
                    events: message.events.isEmpty ? nil : message.events,
                    minimumSeverity: ScanGRPCService.severity(message.minimumSeverity)?.rawValue,
                    payloadFormat: message.payloadFormat.isEmpty ? nil : message.payloadFormat),
                actor: AdminActor(subject: caller.subject, via: "grpc"))
            return Self.message(created)
        }
    }

    public func listWebhooks(request: ServerRequest<Cloudscan_V1_ListWebhooksRequest>, context: ServerContext)
        async throws -> ServerResponse<Cloudscan_V1_ListWebhooksResponse>
    {
        try await scans.unary("ListWebhooks", request, context) { caller, _ in
            try organizationAdmin(caller)
            var response = Cloudscan_V1_ListWebhooksResponse()
            response.webhooks = try await scans.service.webhooks.list(organizationID: caller.organizationID).map(
                Self.message)
            return response
        }
    }

    public func deleteWebhook(request: ServerRequest<Cloudscan_V1_DeleteWebhookRequest>, context: ServerContext)
        async throws -> ServerResponse<Cloudscan_V1_DeleteWebhookResponse>
    {
        try await scans.unary("DeleteWebhook", request, context) { caller, message in
            try organizationAdmin(caller)
            guard let id = UUID(uuidString: message.id) else {
                throw ScanServiceError(code: .notFound, message: "no such webhook subscription")
            }
            try await scans.service.webhooks.delete(
                organizationID: caller.organizationID, id: id, actor: AdminActor(subject: caller.subject, via: "grpc"))
            return Cloudscan_V1_DeleteWebhookResponse()
        }
    }

    static func message(_ item: WebhookSubscription) -> Cloudscan_V1_Webhook {
        var out = Cloudscan_V1_Webhook()
        out.id = item.id.uuidString.lowercased()
        out.url = item.url
        out.events = item.events
        out.minimumSeverity = item.minimumSeverity.map(ScanGRPCService.message) ?? .unspecified
        out.payloadFormat = item.payloadFormat
        out.enabled = item.enabled
        out.createdAt = Google_Protobuf_Timestamp(date: item.createdAt)
        out.secret = item.secret ?? ""
        return out
    }
}
