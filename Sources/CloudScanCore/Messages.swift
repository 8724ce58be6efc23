import Foundation

/// The message contracts on the broker. Each type's JSON Schema is `topology/schemas/<type>.json`;
/// the `type` AMQP property names it (e.g. `scan.create.v1`).
public enum MessageType: String, Sendable, CaseIterable {
    case scanCreate = "scan.create.v1"
    case scanCancel = "scan.cancel.v1"
    case scanRetry = "scan.retry.v1"
    case findingsBatch = "findings.batch.v1"
    case statusReport = "status.report.v1"
    case scanEvent = "scan.event.v1"
    case webhookDelivery = "webhook.delivery.v1"
}

/// Exchanges of the fleet.
public enum Exchanges {
    public static let commands = "cloudscan.commands"
    public static let events = "cloudscan.events"
    public static let findings = "cloudscan.findings"
    public static let status = "cloudscan.status"
    public static let deadLetter = "cloudscan.dlx"
}

/// Headers every message carries.
public enum MessageHeaders {
    public static let organizationID = "x-organization-id"
    public static let traceparent = "traceparent"
}

/// `scan.create.v1`.
public struct ScanCreateMessage: Codable, Sendable, Hashable {
    public struct ProjectReference: Codable, Sendable, Hashable {
        public var id: UUID?
        public var externalKey: String?
        public init(id: UUID? = nil, externalKey: String? = nil) {
            self.id = id
            self.externalKey = externalKey
        }
    }
    public struct Artifact: Codable, Sendable, Hashable {
        public var url: String
        public var sha256: String?
        public init(url: String, sha256: String? = nil) {
            self.url = url
            self.sha256 = sha256
        }
    }
    public var scanID: UUID
    public var organizationID: UUID
    public var project: ProjectReference
    public var scanTypes: [ScanType]
    public var artifact: Artifact
    public var requestedAt: Date
    public var timeoutSeconds: Int?
    public var labels: [String: String]?

    public init(
        scanID: UUID, organizationID: UUID, project: ProjectReference, scanTypes: [ScanType], artifact: Artifact,
        requestedAt: Date, timeoutSeconds: Int? = nil, labels: [String: String]? = nil
    ) {
        self.scanID = scanID
        self.organizationID = organizationID
        self.project = project
        self.scanTypes = scanTypes
        self.artifact = artifact
        self.requestedAt = requestedAt
        self.timeoutSeconds = timeoutSeconds
        self.labels = labels
    }
}

/// `scan.cancel.v1`.
public struct ScanCancelMessage: Codable, Sendable, Hashable {
    public var scanID: UUID
    public var organizationID: UUID
    public var requestedAt: Date
    public var requestedBy: String?
    public var reason: String?

    public init(
        scanID: UUID, organizationID: UUID, requestedAt: Date, requestedBy: String? = nil, reason: String? = nil
    ) {
        self.scanID = scanID
        self.organizationID = organizationID
        self.requestedAt = requestedAt
        self.requestedBy = requestedBy
        self.reason = reason
    }
}

/// `scan.retry.v1`: run another attempt (published by the sweeper).
public struct ScanRetryMessage: Codable, Sendable, Hashable {
    public var scanID: UUID
    public var organizationID: UUID
    public var attempt: Int
    public var reason: String
    public var requestedAt: Date

    public init(scanID: UUID, organizationID: UUID, attempt: Int, reason: String, requestedAt: Date) {
        self.scanID = scanID
        self.organizationID = organizationID
        self.attempt = attempt
        self.reason = reason
        self.requestedAt = requestedAt
    }
}

/// `scan.event.v1`: a scan changed state (exchange `cloudscan.events`, routing key `scan.<status>`).
public struct ScanEventMessage: Codable, Sendable, Hashable {
    public var eventID: String
    public var scanID: UUID
    public var organizationID: UUID
    public var projectID: UUID
    public var status: ScanStatus
    public var at: Date
    public var attempt: Int?
    public var reason: String?
    public var counts: [String: Int]?
    /// When the scan was queued (on final events: with `at`, the scan's duration).
    public var queuedAt: Date?

    public init(
        eventID: String, scanID: UUID, organizationID: UUID, projectID: UUID, status: ScanStatus, at: Date,
        attempt: Int? = nil, reason: String? = nil, counts: [String: Int]? = nil, queuedAt: Date? = nil
    ) {
        self.queuedAt = queuedAt
        self.eventID = eventID
        self.scanID = scanID
        self.organizationID = organizationID
        self.projectID = projectID
        self.status = status
        self.at = at
        self.attempt = attempt
        self.reason = reason
        self.counts = counts
    }
}

/// One finding inside a `findings.batch.v1`.
public struct FindingRecord: Codable, Sendable, Hashable {
    public var scanner: String
    public var ruleID: String
    public var severity: Severity
    public var title: String
    public var message: String?
    public var path: String?
    public var line: Int?
    public var column: Int?
    public var cwe: [String]?
    public var fingerprint: String
    /// The scanner's own record (a SARIF result), kept as jsonb.
    public var raw: JSONValue?

    public init(
        scanner: String, ruleID: String, severity: Severity, title: String, message: String? = nil, path: String? = nil,
        line: Int? = nil, column: Int? = nil, cwe: [String]? = nil, fingerprint: String, raw: JSONValue? = nil
    ) {
        self.scanner = scanner
        self.ruleID = ruleID
        self.severity = severity
        self.title = title
        self.message = message
        self.path = path
        self.line = line
        self.column = column
        self.cwe = cwe
        self.fingerprint = fingerprint
        self.raw = raw
    }
}

/// `findings.batch.v1`.
public struct FindingsBatchMessage: Codable, Sendable, Hashable {
    /// At most this many findings per message.
    public static let maximumFindings = 500
    /// A message's body stays under this many bytes (the runner chunks by count and by size).
    public static let maximumBytes = 512 * 1024
    public var scanID: UUID
    public var organizationID: UUID
    public var attempt: Int
    public var batchIndex: Int
    /// The attempt's runner token (`RunnerTokenMinter`): proves the sender runs this scan.
    public var runnerToken: String
    public var findings: [FindingRecord]

    public init(
        scanID: UUID, organizationID: UUID, attempt: Int, batchIndex: Int, runnerToken: String,
        findings: [FindingRecord]
    ) {
        self.scanID = scanID
        self.organizationID = organizationID
        self.attempt = attempt
        self.batchIndex = batchIndex
        self.runnerToken = runnerToken
        self.findings = findings
    }

    /// The message id: `<scan_id>:<attempt>:<batch_index>`.
    public var messageID: String { "\(scanID.uuidString.lowercased()):\(attempt):\(batchIndex)" }
}

/// `status.report.v1`: a runner's report (exchange `cloudscan.status`, routing key `status.<kind>`).
public struct StatusReportMessage: Codable, Sendable, Hashable {
    public enum Kind: String, Codable, Sendable, CaseIterable {
        case started, heartbeat, completed, failed
    }

    /// One scanner's result within a completed report.
    public struct ScannerOutcome: Codable, Sendable, Hashable {
        public enum Outcome: String, Codable, Sendable {
            case ok, failed
            case timedOut = "timed_out"
            case skipped
        }
        public var name: String
        public var outcome: Outcome
        public var durationMS: Int?
        public var findings: Int?
        public var reason: String?

        public init(name: String, outcome: Outcome, durationMS: Int? = nil, findings: Int? = nil, reason: String? = nil)
        {
            self.name = name
            self.outcome = outcome
            self.durationMS = durationMS
            self.findings = findings
            self.reason = reason
        }

        enum CodingKeys: String, CodingKey {
            case name, outcome, findings, reason
            case durationMS = "durationMs"
        }
    }

    public var scanID: UUID
    public var organizationID: UUID
    public var attempt: Int
    public var kind: Kind
    public var at: Date
    public var runnerToken: String
    /// With completed: how many findings batches were published, and the findings by severity.
    public var findingsBatches: Int?
    public var counts: SeverityCounts?
    public var scanners: [ScannerOutcome]?
    /// With completed: set when some scanner failed or timed out (the result is partial).
    public var partial: Bool?
    /// With failed (and partial completed): a short machine-readable reason, and a message.
    public var reason: String?
    public var message: String?

    public init(
        scanID: UUID, organizationID: UUID, attempt: Int, kind: Kind, at: Date = Date(), runnerToken: String,
        findingsBatches: Int? = nil, counts: SeverityCounts? = nil, scanners: [ScannerOutcome]? = nil,
        partial: Bool? = nil, reason: String? = nil, message: String? = nil
    ) {
        self.scanID = scanID
        self.organizationID = organizationID
        self.attempt = attempt
        self.kind = kind
        self.at = at
        self.runnerToken = runnerToken
        self.findingsBatches = findingsBatches
        self.counts = counts
        self.scanners = scanners
        self.partial = partial
        self.reason = reason
        self.message = message
    }
}

/// JSON as on the wire: snake_case keys, RFC 3339 timestamps with milliseconds, sorted keys.
public enum MessageCoding {
    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .custom { keys in
            let key = keys.last!.stringValue
            return AnyKey(snakeCase(key))
        }
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(formatTimestamp(date))
        }
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .custom { keys in
            AnyKey(camelCase(keys.last!.stringValue))
        }
        decoder.dateDecodingStrategy = .custom { decoder in
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let date = parseTimestamp(text) else {
                throw DecodingError.dataCorrupted(
                    .init(codingPath: decoder.codingPath, debugDescription: "not an RFC 3339 timestamp"))
            }
            return date
        }
        return decoder
    }

    /// A Swift property name as the wire spells it (`scanID` → `scan_id`).
    public static func wireName(_ key: String) -> String { snakeCase(key) }

    /// `scanID` → `scan_id`, `ruleId` → `rule_id`, `organizationID` → `organization_id`.
    static func snakeCase(_ key: String) -> String {
        var out = ""
        let characters = Array(key)
        for (index, character) in characters.enumerated() {
            if character.isUppercase {
                let previousIsUpper = index > 0 && characters[index - 1].isUppercase
                if index > 0, !previousIsUpper { out.append("_") }
                out.append(Character(character.lowercased()))
            } else {
                out.append(character)
            }
        }
        return out
    }

    /// The inverse of ``snakeCase(_:)`` for the keys the messages use.
    static func camelCase(_ key: String) -> String {
        let parts = key.split(separator: "_")
        guard let first = parts.first else { return key }
        return
            ([String(first)]
            + parts.dropFirst().map { part -> String in
                part == "id" ? "ID" : part.prefix(1).uppercased() + part.dropFirst()
            }).joined()
    }

    static func formatTimestamp(_ date: Date) -> String { RFC3339.string(from: date) }

    static func parseTimestamp(_ text: String) -> Date? { RFC3339.date(from: text) }

    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ string: String) { stringValue = string }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }
}

/// `webhook.delivery.v1`: one subscription's delivery of a scan event, tried again. The notifier
/// parks it in a delay tier of `cloudscan.notify` after a failed attempt; it comes back to that
/// queue when the tier's time is up.
public struct WebhookDeliveryMessage: Codable, Sendable, Hashable {
    public var subscriptionID: UUID
    public var organizationID: UUID
    /// The attempt this message is for (the first retry is attempt 2).
    public var attempt: Int
    public var event: ScanEventMessage

    public init(subscriptionID: UUID, organizationID: UUID, attempt: Int, event: ScanEventMessage) {
        self.subscriptionID = subscriptionID
        self.organizationID = organizationID
        self.attempt = attempt
        self.event = event
    }
}

extension ScanCreateMessage {
    /// The same cap as the HTTP API's request body: a gateway publishing straight to the broker
    /// is held to what the API would accept.
    public static let maximumBodyBytes = 64 * 1024

    /// What decoding does not check of scan.create.v1 as published: the size, members the schema
    /// does not know (`additionalProperties: false` at every level) and `metadata`'s bounds. Nil
    /// when the body has the schema's shape; otherwise why not, naming the field.
    public static func wireProblem(_ body: [UInt8]) -> String? {
        guard body.count <= maximumBodyBytes else { return "body: over \(maximumBodyBytes) bytes" }
        guard JSONDuplicateNames.isPlainUTF8(body) else { return "body: not UTF-8 JSON text" }
        if let name = JSONDuplicateNames.first(in: body) { return "\(name): given twice in one object" }
        guard let parsed = try? JSONSerialization.jsonObject(with: Data(body), options: [.fragmentsAllowed]) else {
            return "body: not JSON"
        }
        guard let object = parsed as? [String: Any] else { return "body: not a JSON object" }
        func unknown(_ members: [String: Any], _ allowed: Set<String>, in prefix: String) -> String? {
            members.keys.sorted().first(where: { !allowed.contains($0) }).map {
                "\(prefix)\($0.prefix(64)): not a field of scan.create.v1"
            }
        }
        let top: Set = [
            "scan_id", "organization_id", "project", "scan_types", "artifact", "requested_at", "timeout_seconds",
            "labels", "metadata",
        ]
        if let problem = unknown(object, top, in: "") { return problem }
        if let project = object["project"] as? [String: Any],
            let problem = unknown(project, ["id", "external_key"], in: "project.")
        {
            return problem
        }
        if let artifact = object["artifact"] as? [String: Any],
            let problem = unknown(artifact, ["url", "sha256"], in: "artifact.")
        {
            return problem
        }
        if let metadata = object["metadata"] {
            guard let members = metadata as? [String: Any], members.count <= 64 else {
                return "metadata: an object of at most 64 members"
            }
        }
        return nil
    }
}
