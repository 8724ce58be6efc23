import CloudScanAMQP
import CloudScanAuth
import CloudScanCore
import CloudScanHTTP
import CloudScanPostgres
import Foundation
import Logging
import Synchronization

/// `cloudscan notifier`: scan.completed / scan.failed (`cloudscan.notify`) → organizations' webhooks.
///
/// For each event, every enabled subscription of the scan's organization that wants the event
/// (and, with `minimum_severity`, only when the scan has findings at or above it) gets a POST:
/// JSON (or a Slack-compatible `{"text": …}`), signed with ``WebhookSignature`` over timestamp and
/// body, with `X-Cloudscan-Delivery` (stable across attempts, for the receiver to dedupe) and a
/// time limit. Each attempt is logged in `webhook_deliveries`. A failed attempt is tried again
/// through the queue's delay tiers (a `webhook.delivery.v1` for that subscription alone); after
/// the last tier the delivery is dead-lettered with the reason. A delivery already made is not
/// made again (a redelivered event finds it in the log).
///
/// One receiver cannot hold up another's: subscriptions of an event are posted to at once, each
/// attempt has a time limit, and a subscription with ``Configuration/maximumInFlightPerSubscription``
/// attempts already waiting on it gets its new ones parked in the first delay tier instead of
/// taking more of the consumer's slots.
public struct Notifier: Sendable {
    public struct Configuration: Sendable {
        /// The queue this notifier consumes (its delay tiers are `<queue>.retry.<N>s`).
        public var queue: String
        public var retryDelaysSeconds: [Int]
        public var timeout: Duration
        public var maximumInFlightPerSubscription: Int
        public var deadLetterExchange: String
        /// Where deliveries may go: checked at every attempt, the checked addresses pinned.
        public var screen: DestinationScreen
        /// Opens the sealed signing secrets (WEBHOOK_SECRET_KEYS). A secret stored before sealing
        /// is used as it is until `cloudscan admin webhook-secrets reseal` seals it.
        public var secrets: SecretBox?

        public init(
            queue: String = "cloudscan.notify", retryDelaysSeconds: [Int] = [10, 60, 600, 3600],
            timeout: Duration = .seconds(10), maximumInFlightPerSubscription: Int = 2,
            deadLetterExchange: String = Exchanges.deadLetter, screen: DestinationScreen = .init(),
            secrets: SecretBox? = nil
        ) {
            self.screen = screen
            self.secrets = secrets
            self.queue = queue
            self.retryDelaysSeconds = retryDelaysSeconds
            self.timeout = timeout
            self.maximumInFlightPerSubscription = maximumInFlightPerSubscription
            self.deadLetterExchange = deadLetterExchange
        }
    }

    struct Subscription: Sendable {
        var id: UUID
        var organizationID: UUID
        var url: String
        var secret: String
        var events: [String]
        var minimumSeverity: Severity?
        var slack: Bool
    }

    let client: PostgresClient
    let publisher: AMQPPublisher
    let http: CurlHTTPClient
    let configuration: Configuration
    let logger: Logger
    private let inFlight = InFlightCounts()

    public init(
        client: PostgresClient, publisher: AMQPPublisher, http: CurlHTTPClient = .init(),
        configuration: Configuration = .init(), logger: Logger
    ) {
        self.client = client
        self.publisher = publisher
        self.http = http
        self.configuration = configuration
        self.logger = logger
    }

    // MARK: Messages

    /// The handler for `cloudscan.notify`.
    public func handle(_ delivery: AMQPDelivery) async throws -> AMQPConsumerService.Outcome {
        let type =
            delivery.message.type
            ?? (delivery.routingKey.hasPrefix("scan.") ? MessageType.scanEvent.rawValue : "")
        let body = Data(delivery.message.body)
        switch type {
        case MessageType.scanEvent.rawValue:
            guard let event = try? MessageCoding.decoder().decode(ScanEventMessage.self, from: body) else {
                return .deadLetter(reason: "invalid scan.event.v1")
            }
            guard delivery.organizationHeaderAgrees(with: event.organizationID) else {
                return .deadLetter(reason: "x-organization-id does not match the event's organization_id")
            }
            guard event.status == .completed || event.status == .failed else { return .ack }
            let subscriptions = try await subscriptions(of: event.organizationID).filter { Self.wants($0, event) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for subscription in subscriptions {
                    group.addTask { try await attempt(subscription, event, number: 1) }
                }
                try await group.waitForAll()
            }
            return .ack
        case MessageType.webhookDelivery.rawValue:
            guard let message = try? MessageCoding.decoder().decode(WebhookDeliveryMessage.self, from: body),
                (1...1000).contains(message.attempt), message.event.organizationID == message.organizationID
            else {
                return .deadLetter(reason: "invalid webhook.delivery.v1")
            }
            guard delivery.organizationHeaderAgrees(with: message.organizationID) else {
                return .deadLetter(reason: "x-organization-id does not match the message's organization_id")
            }
            guard
                let subscription = try await subscriptions(of: message.organizationID).first(where: {
                    $0.id == message.subscriptionID
                })
            else {
                logger.info(
                    "webhook subscription gone or disabled; delivery dropped",
                    metadata: ["subscription_id": "\(message.subscriptionID)"])
                return .ack
            }
            try await attempt(subscription, message.event, number: message.attempt)
            return .ack
        default:
            return .deadLetter(
                reason: "unexpected message type \(type.isEmpty ? "(none)" : type) on \(configuration.queue)")
        }
    }

    /// Whether the subscription wants the event: its type, and findings at or above its minimum.
    static func wants(_ subscription: Subscription, _ event: ScanEventMessage) -> Bool {
        guard subscription.events.contains("scan.\(event.status.rawValue)") else { return false }
        guard let minimum = subscription.minimumSeverity else { return true }
        return Severity.allCases.contains { $0 >= minimum && (event.counts?[$0.rawValue] ?? 0) > 0 }
    }

    // MARK: One attempt

    private func attempt(_ subscription: Subscription, _ event: ScanEventMessage, number: Int) async throws {
        if try await delivered(subscription, event) { return }
        let admitted = inFlight.enter(subscription.id, limit: configuration.maximumInFlightPerSubscription)
        guard admitted else {
            // The receiver is slow with earlier deliveries: this one waits in the first tier
            // (not counted as an attempt) rather than take another slot.
            try await park(subscription, event, attempt: number, tier: 0)
            return
        }
        defer { inFlight.leave(subscription.id) }
        let deliveryID = "\(event.eventID):\(subscription.id.uuidString.lowercased())"
        let body = Self.payload(event, deliveryID: deliveryID, slack: subscription.slack)
        let timestamp = Int(Date().timeIntervalSince1970)
        var status: Int?
        var failure: String?
        do {
            let secret = try openSecret(subscription)
            // Resolved and screened now, and connected only to what was screened.
            let destination: DestinationScreen.Checked
            do {
                destination = try await configuration.screen.check(url: subscription.url)
            } catch let refusal as DestinationScreen.Refusal {
                throw Undeliverable(message: "destination refused: \(refusal.message)")
            }
            var request = HTTPRequest(
                method: "POST", url: subscription.url,
                headers: [
                    ("Content-Type", "application/json"), ("User-Agent", "cloudscan-notifier/1"),
                    ("X-Cloudscan-Event", "scan.\(event.status.rawValue)"), ("X-Cloudscan-Delivery", deliveryID),
                    (
                        WebhookSignature.header,
                        WebhookSignature.value(secret: secret, timestamp: timestamp, body: body)
                    ),
                ] + (TraceContext.current.map { [("traceparent", $0.traceparent)] } ?? []), body: body,
                timeout: configuration.timeout, maximumResponseBytes: 64 << 10)
            request.pinnedAddresses = destination.pins
            let response = try await http.perform(request)
            status = response.status
            if !(200..<300).contains(response.status) { failure = "HTTP \(response.status)" }
        } catch {
            failure = "\(error)"
        }
        let tiers = configuration.retryDelaysSeconds
        let final = failure != nil && number > tiers.count
        try await record(
            subscription, event, attempt: number,
            status: failure == nil ? "delivered" : (final ? "failed" : "retrying"), code: status, error: failure)
        guard let failure else {
            logger.info(
                "webhook delivered",
                metadata: [
                    "subscription_id": "\(subscription.id)", "event_id": "\(event.eventID)", "attempt": "\(number)",
                ])
            return
        }
        if final {
            try await deadLetter(subscription, event, attempt: number, reason: failure)
        } else {
            try await park(subscription, event, attempt: number + 1, tier: number - 1)
        }
    }

    /// A retry of this subscription's delivery, into delay tier `tier`.
    private func park(_ subscription: Subscription, _ event: ScanEventMessage, attempt: Int, tier: Int) async throws {
        let tiers = configuration.retryDelaysSeconds
        guard !tiers.isEmpty else {
            return try await deadLetter(subscription, event, attempt: attempt, reason: "no delay tiers to retry in")
        }
        let seconds = tiers[min(tier, tiers.count - 1)]
        try await publisher.publish(
            message(subscription, event, attempt: attempt), exchange: "",
            routingKey: AMQPTopology.retryQueueName(configuration.queue, delaySeconds: seconds))
        logger.notice(
            "webhook delivery failed; retrying later",
            metadata: [
                "subscription_id": "\(subscription.id)", "event_id": "\(event.eventID)", "next_attempt": "\(attempt)",
                "in_seconds": "\(seconds)",
            ])
    }

    private func deadLetter(_ subscription: Subscription, _ event: ScanEventMessage, attempt: Int, reason: String)
        async throws
    {
        var copy = message(subscription, event, attempt: attempt)
        let host = URL(string: subscription.url)?.host ?? "?"
        copy.headers["x-cloudscan-reason"] = String(
            "webhook to \(host) failed after \(attempt) attempts: \(reason)".prefix(1024))
        copy.headers["x-cloudscan-original-routing-key"] = configuration.queue
        try await publisher.publish(copy, exchange: configuration.deadLetterExchange, routingKey: configuration.queue)
        logger.warning(
            "webhook delivery dead-lettered",
            metadata: ["subscription_id": "\(subscription.id)", "event_id": "\(event.eventID)", "reason": "\(reason)"])
    }

    private func message(_ subscription: Subscription, _ event: ScanEventMessage, attempt: Int) -> AMQPMessage {
        let body = WebhookDeliveryMessage(
            subscriptionID: subscription.id, organizationID: subscription.organizationID, attempt: attempt,
            event: event)
        return AMQPMessage(
            body: Array((try? MessageCoding.encoder().encode(body)) ?? Data()),
            type: MessageType.webhookDelivery.rawValue,
            messageID: "\(event.eventID):\(subscription.id.uuidString.lowercased()):\(attempt)",
            correlationID: event.scanID.uuidString.lowercased(),
            headers: [MessageHeaders.organizationID: subscription.organizationID.uuidString.lowercased()])
    }

    /// The POST body: the event as JSON, or a Slack message.
    static func payload(_ event: ScanEventMessage, deliveryID: String, slack: Bool) -> [UInt8] {
        var out = JSONText()
        let counts = Severity.allCases.map { ($0.rawValue, event.counts?[$0.rawValue] ?? 0) }
        if slack {
            let summary = counts.filter { $0.1 > 0 }.map { "\($0.1) \($0.0)" }.joined(separator: ", ")
            var text = "cloudscan: scan \(event.scanID.uuidString.lowercased()) \(event.status.rawValue)"
            if let reason = event.reason, event.status == .failed { text += " (\(reason))" }
            text += summary.isEmpty ? " — no findings" : " — \(summary)"
            out.raw("{\"text\":")
            out.string(text)
            out.raw("}")
            return out.bytes
        }
        out.raw("{\"type\":")
        out.string("scan.\(event.status.rawValue)")
        out.raw(",\"delivery_id\":")
        out.string(deliveryID)
        out.raw(",\"event_id\":")
        out.string(event.eventID)
        out.raw(",\"scan_id\":")
        out.string(event.scanID.uuidString.lowercased())
        out.raw(",\"organization_id\":")
        out.string(event.organizationID.uuidString.lowercased())
        out.raw(",\"project_id\":")
        out.string(event.projectID.uuidString.lowercased())
        out.raw(",\"status\":")
        out.string(event.status.rawValue)
        out.raw(",\"at\":")
        out.string(RFC3339.string(from: event.at))
        if let attempt = event.attempt { out.raw(",\"attempt\":\(attempt)") }
        if let reason = event.reason {
            out.raw(",\"reason\":")
            out.string(reason)
        }
        out.raw(",\"counts\":{")
        out.raw(counts.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ","))
        out.raw("}}")
        return out.bytes
    }

    struct Undeliverable: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    /// The subscription's signing secret, opened (sealed rows) or as stored (rows from before
    /// sealing).
    private func openSecret(_ subscription: Subscription) throws -> String {
        guard SecretBox.isSealed(subscription.secret) else { return subscription.secret }
        guard let box = configuration.secrets else {
            throw Undeliverable(message: "the signing secret is sealed and no WEBHOOK_SECRET_KEYS is configured")
        }
        do {
            return try box.open(
                subscription.secret,
                context: SecretBox.webhookContext(
                    organizationID: subscription.organizationID, subscriptionID: subscription.id))
        } catch {
            throw Undeliverable(message: "the signing secret does not open: \(error)")
        }
    }

    // MARK: Database

    private func subscriptions(of organization: UUID) async throws -> [Subscription] {
        try await client.withTransaction(organizationID: organization) { c in
            try await c.query(
                """
                SELECT id, url, secret, events, minimum_severity, payload_format
                FROM webhook_subscriptions WHERE enabled ORDER BY created_at, id
                """
            ).map { row in
                Subscription(
                    id: try row.decode(UUID.self, at: 0), organizationID: organization,
                    url: try row.decode(String.self, at: 1), secret: try row.decode(String.self, at: 2),
                    events: try row.decode([String].self, at: 3),
                    minimumSeverity: try row.decode(String?.self, at: 4).flatMap(Severity.init(rawValue:)),
                    slack: try row.decode(String.self, at: 5) == "slack")
            }
        }
    }

    private func delivered(_ subscription: Subscription, _ event: ScanEventMessage) async throws -> Bool {
        try await client.withTransaction(organizationID: subscription.organizationID) { c in
            try await c.query(
                """
                SELECT 1 FROM webhook_deliveries
                WHERE subscription_id = \(subscription.id) AND event_id = \(event.eventID) AND status = 'delivered'
                """
            ).first != nil
        }
    }

    private func record(
        _ subscription: Subscription, _ event: ScanEventMessage, attempt: Int, status: String, code: Int?,
        error: String?
    ) async throws {
        try await client.withTransaction(organizationID: subscription.organizationID) { c in
            _ = try await c.execute(
                """
                INSERT INTO webhook_deliveries (organization_id, subscription_id, event_id, event_type, scan_id, attempt,
                                                status, response_code, error, delivered_at)
                VALUES (\(subscription.organizationID), \(subscription.id), \(event.eventID),
                        \("scan.\(event.status.rawValue)"), \(event.scanID), \(Int32(attempt)), \(status),
                        \(code.map(Int32.init)), \(error.map { String($0.prefix(1000)) }),
                        CASE WHEN \(status) = 'delivered' THEN now() END)
                ON CONFLICT (subscription_id, event_id, attempt) DO UPDATE
                SET status = excluded.status, response_code = excluded.response_code, error = excluded.error,
                    delivered_at = excluded.delivered_at
                """)
        }
    }
}

/// Attempts waiting on each subscription's receiver.
final class InFlightCounts: Sendable {
    private let counts = Mutex<[UUID: Int]>([:])

    /// Takes a place if fewer than `limit` are taken.
    func enter(_ id: UUID, limit: Int) -> Bool {
        counts.withLock { counts in
            guard counts[id, default: 0] < limit else { return false }
            counts[id, default: 0] += 1
            return true
        }
    }

    func leave(_ id: UUID) {
        counts.withLock { counts in
            let left = counts[id, default: 1] - 1
            counts[id] = left > 0 ? left : nil
        }
    }
}
