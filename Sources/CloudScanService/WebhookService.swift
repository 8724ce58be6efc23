import CloudScanAuth
import CloudScanCore
import CloudScanHTTP
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
/// (row-level security: another organization's subscription does not exist for it). The
/// transports let only the organization's admins call it; every change is audited
/// (`admin_audit`, entity `webhook_subscription`) in its transaction.
///
/// A destination must resolve to public addresses only (``DestinationScreen``; the notifier
/// checks again at every delivery and pins what it checked). The signing secret is sealed at rest
/// (``SecretBox``, bound to the organization and subscription) and shown once, by create.
public struct WebhookService: Sendable {
    public static let events = ["scan.completed", "scan.failed"]
    /// Subscriptions an organization may have.
    public static let maximumPerOrganization = 50

    let client: PostgresClient
    let logger: Logger
    let screen: DestinationScreen
    let secrets: SecretBox?

    public init(client: PostgresClient, logger: Logger, screen: DestinationScreen = .init(), secrets: SecretBox?) {
        self.client = client
        self.logger = logger
        self.screen = screen
        self.secrets = secrets
    }

    public func create(organizationID: UUID, request: CreateWebhookRequest, actor: AdminActor) async throws
        -> WebhookSubscription
    {
        let checked = try Self.validate(request)
        do {
            _ = try await screen.check(url: checked.url)
        } catch let refusal as DestinationScreen.Refusal {
            throw ScanServiceError.invalidArgument(field: "url", refusal.message)
        }
        guard let secrets else {
            throw ScanServiceError(
                code: .unavailable, message: "webhook secrets cannot be stored: no WEBHOOK_SECRET_KEYS configured")
        }
        let id = UUID()
        let sealed = try secrets.seal(
            checked.secret, context: SecretBox.webhookContext(organizationID: organizationID, subscriptionID: id))
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
                INSERT INTO webhook_subscriptions (id, organization_id, url, secret, events, minimum_severity, payload_format)
                VALUES (\(id), \(organizationID), \(checked.url), \(sealed), \(checked.events),
                        \(checked.minimumSeverity?.rawValue), \(checked.payloadFormat))
                RETURNING id, created_at
                """
            ).single()
            let created = WebhookSubscription(
                id: try row.decode(UUID.self, at: 0), url: checked.url, events: checked.events,
                minimumSeverity: checked.minimumSeverity, payloadFormat: checked.payloadFormat, enabled: true,
                createdAt: try row.decode(Date.self, at: 1), secret: checked.secret)
            try await AdminService.audit(
                c, organizationID: organizationID, actor: actor, action: "webhook.create",
                entityType: "webhook_subscription", entityID: id, before: nil, after: Self.auditView(created))
            return created
        }
    }

    /// What the audit log keeps of a subscription: never the secret, and the URL without its
    /// query (a Slack-style URL's path is the credential, so only scheme and host are kept).
    static func auditView(_ item: WebhookSubscription) -> JSONValue {
        let host = URLComponents(string: item.url).map { "\($0.scheme ?? "")://\($0.host ?? "")" } ?? ""
        var members: [String: JSONValue] = [
            "destination": .string(host), "events": .array(item.events.map { .string($0) }),
            "payload_format": .string(item.payloadFormat), "enabled": .bool(item.enabled),
        ]
        if let minimum = item.minimumSeverity { members["minimum_severity"] = .string(minimum.rawValue) }
        return .object(members)
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

    public func delete(organizationID: UUID, id: UUID, actor: AdminActor) async throws {
        try await client.withTransaction(organizationID: organizationID) { c in
            let rows = try await c.query(
                """
                DELETE FROM webhook_subscriptions WHERE id = \(id)
                RETURNING url, events, minimum_severity, payload_format, enabled, created_at
                """)
            guard let row = rows.first else {
                throw ScanServiceError(code: .notFound, message: "no such webhook subscription")
            }
            let before = WebhookSubscription(
                id: id, url: try row.decode(String.self, at: 0), events: try row.decode([String].self, at: 1),
                minimumSeverity: try row.decode(String?.self, at: 2).flatMap(Severity.init(rawValue:)),
                payloadFormat: try row.decode(String.self, at: 3), enabled: try row.decode(Bool.self, at: 4),
                createdAt: try row.decode(Date.self, at: 5), secret: nil)
            try await AdminService.audit(
                c, organizationID: organizationID, actor: actor, action: "webhook.delete",
                entityType: "webhook_subscription", entityID: id, before: Self.auditView(before), after: nil)
        }
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
    public var webhooks: WebhookService {
        WebhookService(client: client, logger: logger, screen: webhookScreen, secrets: webhookSecrets)
    }
}

extension AdminService {
    /// What a re-seal did: values sealed anew (written before sealing, or under an older key),
    /// values already current, and values that did not open (listed by subscription id).
    public struct ResealReport: Sendable {
        public var resealed = 0
        public var current = 0
        public var unopenable: [UUID] = []
    }

    /// Seals every webhook secret of every organization under `box`'s current key: the step of a
    /// key rotation between listing the new key first and dropping the old one, and how secrets
    /// stored before sealing get sealed. One transaction per organization.
    public func resealWebhookSecrets(with box: SecretBox) async throws -> ResealReport {
        var report = ResealReport()
        var after: String?
        repeat {
            let (organizations, next) = try await listOrganizations(after: after, pageSize: 500)
            for organization in organizations {
                let part = try await client.withTransaction(organizationID: organization.id) { c in
                    var part = ResealReport()
                    let rows = try await c.query("SELECT id, secret FROM webhook_subscriptions FOR UPDATE")
                    for row in rows {
                        let id = try row.decode(UUID.self, at: 0)
                        let stored = try row.decode(String.self, at: 1)
                        if box.isCurrent(stored) {
                            part.current += 1
                            continue
                        }
                        let context = SecretBox.webhookContext(organizationID: organization.id, subscriptionID: id)
                        guard let plain = SecretBox.isSealed(stored) ? try? box.open(stored, context: context) : stored
                        else {
                            part.unopenable.append(id)
                            continue
                        }
                        let sealed = try box.seal(plain, context: context)
                        try await c.execute("UPDATE webhook_subscriptions SET secret = \(sealed) WHERE id = \(id)")
                        part.resealed += 1
                    }
                    return part
                }
                report.resealed += part.resealed
                report.current += part.current
                report.unopenable += part.unopenable
            }
            after = next
        } while after != nil
        return report
    }
}
