import Foundation

/// A message to publish, or the content of a delivery.
public struct AMQPMessage: Sendable, Hashable {
    /// The payload.
    public var body: [UInt8]
    /// `content_type`, e.g. `application/json`.
    public var contentType: String?
    /// `type`, e.g. `scan.create.v1`.
    public var type: String?
    /// `message_id`: a stable id consumers deduplicate on.
    public var messageID: String?
    /// `correlation_id`: the scan id.
    public var correlationID: String?
    /// `timestamp` (whole seconds on the wire).
    public var timestamp: Date?
    /// `app_id`: the publishing role.
    public var appID: String?
    /// String headers (`x-organization-id`, `traceparent`, …).
    public var headers: [String: String]
    /// Persistent (delivery mode 2) unless set otherwise.
    public var persistent: Bool

    /// A message; persistent by default.
    public init(
        body: [UInt8], contentType: String? = "application/json", type: String? = nil, messageID: String? = nil,
        correlationID: String? = nil, timestamp: Date? = nil, appID: String? = nil, headers: [String: String] = [:],
        persistent: Bool = true
    ) {
        self.body = body
        self.contentType = contentType
        self.type = type
        self.messageID = messageID
        self.correlationID = correlationID
        self.timestamp = timestamp
        self.appID = appID
        self.headers = headers
        self.persistent = persistent
    }
}

/// The death record RabbitMQ adds when a message is dead-lettered (`x-death`, newest first).
public struct AMQPDeathRecord: Sendable, Hashable {
    public var queue: String
    public var reason: String
    public var count: Int
    public var exchange: String
}

/// A delivered message with its delivery metadata. Settle it exactly once with
/// ``AMQPConsumer/ack(_:multiple:)``, ``AMQPConsumer/nack(_:requeue:multiple:)`` or
/// ``AMQPConsumer/reject(_:requeue:)``, on the consumer that delivered it.
public struct AMQPDelivery: Sendable {
    /// The message.
    public var message: AMQPMessage
    /// The broker's tag for this delivery, valid on one channel of one connection.
    public var deliveryTag: UInt64
    /// Which connection of the consumer delivered it; settling after a reconnect is refused.
    public var generation: UInt64
    /// Whether the broker delivered it before (a consumer died holding it, or it was requeued).
    public var redelivered: Bool
    public var exchange: String
    public var routingKey: String
    /// `x-delivery-count` (quorum queues): how many times it was returned before this delivery.
    public var deliveryCount: Int {
        Int(message.headers["x-delivery-count"] ?? "") ?? 0
    }
    /// Dead-letter history, if any.
    public var deaths: [AMQPDeathRecord]
}
