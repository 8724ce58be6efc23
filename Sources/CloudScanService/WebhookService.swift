import CloudScanCore
import CloudScanPostgres
import Foundation
import Logging

/// An organization's webhook subscription as the API shows it (its secret only when created).
public struct WebhookSubscription: Sendable, Hashable {
    public var id: UUID
    public var url: String
    public var events: [String]
    public var minimumSeverity: Severity?
    public var payloadFormat: String
    public var enabled: Bool
    public var createdAt: Date
    /// The signing secret: returned once, by create.
    public var secret: String?
}

/// What a create asks for; the service validates it.
public struct CreateWebhookRequest: Sendable {
    public var url: String
    public var secret: String?
    public var events: [String]?
    public var minimumSeverity: String?
    public var payloadFormat: String?

    public init(
        url: String, secret: String? = nil, events: [String]? = nil, minimumSeverity: String? = nil,
        payloadFormat: String? = nil
    ) {
        self.url = url
        self.secret = secret
        self.events = events
        self.minimumSeverity = minimumSeverity
        self.payloadFormat = payloadFormat
    }
}

/// Webhook subscriptions (create, list, delete), each call within the caller's organization
/// (row-level security: another organization's subscription does not exist for it).
public struct WebhookService: Sendable {
    public static let events = ["scan.completed", "scan.failed"]
    /// Subscriptions an organization may have.
    public static let maximumPerOrganization = 50

    let client: PostgresClient
    let logger: Logger

    public init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    public func create(organizationID: UUID, request: CreateWebhookRequest) async throws -> WebhookSubscription {
        let checked = try Self.validate(request)
        return try await client.withTransaction(organizationID: organizationID) { c in
            // One at a time per organization, so the cap holds under concurrent creates.
            try await c.query(
                "SELECT pg_advisory_xact_lock(hashtextextended('cloudscan.webhooks:' || \(organizationID)::text, 0))")
            let count = try await c.query("SELECT count(*) FROM webhook_subscriptions").single().decode(Int.self, at: 0)
            guard count < Self.maximumPerOrganization else {
                throw ScanServiceError(
                    code: .failedPrecondition,
                    message: "an organization has at most \(Self.maximumPerOrganization) webhook subscriptions")
            }
            let row = try await c.query(
                """
                INSERT INTO webhook_subscriptions (organization_id, url, secret, events, minimum_severity, payload_format)
                VALUES (\(organizationID), \(checked.url), \(checked.secret), \(checked.events),
                        \(checked.minimumSeverity?.rawValue), \(checked.payloadFormat))
                RETURNING id, created_at
                """
            ).single()
            return WebhookSubscription(
                id: try row.decode(UUID.self, at: 0), url: checked.url, events: checked.events,
                minimumSeverity: checked.minimumSeverity, payloadFormat: checked.payloadFormat, enabled: true,
                createdAt: try row.decode(Date.self, at: 1), secret: checked.secret)
        }
    }

    public func list(organizationID: UUID) async throws -> [WebhookSubscription] {
        try await client.withTransaction(organizationID: organizationID) { c in
            try await c.query(
                """
                SELECT id, url, events, minimum_severity, payload_format, enabled, created_at
                FROM webhook_subscriptions ORDER BY created_at, id
                """
            ).map { row in
                WebhookSubscription(
                    id: try row.decode(UUID.self, at: 0), url: try row.decode(String.self, at: 1),
                    events: try row.decode([String].self, at: 2),
                    minimumSeverity: try row.decode(String?.self, at: 3).flatMap(Severity.init(rawValue:)),
                    payloadFormat: try row.decode(String.self, at: 4), enabled: try row.decode(Bool.self, at: 5),
                    createdAt: try row.decode(Date.self, at: 6), secret: nil)
            }
        }
    }

    public func delete(organizationID: UUID, id: UUID) async throws {
        let deleted = try await client.withTransaction(organizationID: organizationID) { c in
            try await c.execute("DELETE FROM webhook_subscriptions WHERE id = \(id)")
        }
        guard deleted > 0 else { throw ScanServiceError(code: .notFound, message: "no such webhook subscription") }
    }

    struct Checked {
        var url: String
        var secret: String
        var events: [String]
        var minimumSeverity: Severity?
        var payloadFormat: String
    }

    static func validate(_ request: CreateWebhookRequest) throws(ScanServiceError) -> Checked {
        let url = request.url
        guard url.count <= 2048, let parsed = URLComponents(string: url),
            let scheme = parsed.scheme?.lowercased(), scheme == "https" || scheme == "http",
            let host = parsed.host, !host.isEmpty, url.hasPrefix("\(scheme)://"),
            url.unicodeScalars.allSatisfy({ $0.isASCII && $0.value > 0x20 && $0.value != 0x7F })
        else {
            throw .invalidArgument(field: "url", "an http(s) URL with a host, at most 2048 characters")
        }
        let secret: String
        if let given = request.secret {
            guard (16...256).contains(given.count),
                given.unicodeScalars.allSatisfy({ $0.isASCII && $0.value > 0x20 && $0.value < 0x7F })
            else {
                throw .invalidArgument(field: "secret", "16 to 256 printable ASCII characters")
            }
            secret = given
        } else {
            var generator = SystemRandomNumberGenerator()
            secret =
                "whsec_"
                + (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }
                .joined()
        }
        let events = request.events ?? Self.events
        guard !events.isEmpty, Set(events).count == events.count, events.allSatisfy(Self.events.contains) else {
            throw .invalidArgument(field: "events", "one or more of scan.completed, scan.failed, each once")
        }
        var minimum: Severity?
        if let text = request.minimumSeverity {
            guard let value = Severity(rawValue: text) else {
                throw .invalidArgument(field: "minimum_severity", "one of critical, high, medium, low, info")
            }
            minimum = value
        }
        let format = request.payloadFormat ?? "json"
        guard format == "json" || format == "slack" else {
            throw .invalidArgument(field: "payload_format", "json or slack")
        }
        return Checked(url: url, secret: secret, events: events, minimumSeverity: minimum, payloadFormat: format)
    }
}

extension ScanService {
    /// The organization's webhook subscriptions, on the same database client.
    public var webhooks: WebhookService { WebhookService(client: client, logger: logger) }
}
