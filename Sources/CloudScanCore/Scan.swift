import Foundation

/// Findings per severity.
public struct SeverityCounts: Sendable, Hashable, Codable {
    public var critical = 0
    public var high = 0
    public var medium = 0
    public var low = 0
    public var info = 0
    public init() {}

    enum CodingKeys: String, CodingKey { case critical, high, medium, low, info }

    /// A missing severity counts 0 (status.report.v1 lets a runner send only the ones it has).
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        critical = try container.decodeIfPresent(Int.self, forKey: .critical) ?? 0
        high = try container.decodeIfPresent(Int.self, forKey: .high) ?? 0
        medium = try container.decodeIfPresent(Int.self, forKey: .medium) ?? 0
        low = try container.decodeIfPresent(Int.self, forKey: .low) ?? 0
        info = try container.decodeIfPresent(Int.self, forKey: .info) ?? 0
    }
}

/// A scan as the API shows it.
public struct Scan: Sendable, Hashable {
    public var id: UUID
    public var organizationID: UUID
    public var projectID: UUID
    public var status: ScanStatus
    public var scanTypes: [ScanType]
    public var artifactURL: String
    public var artifactSHA256: String?
    public var attempt: Int
    public var timeoutSeconds: Int
    public var labels: [String: String]
    public var failureReason: String?
    public var counts: SeverityCounts
    public var createdAt: Date
    public var updatedAt: Date
    public var finishedAt: Date?

    public init(
        id: UUID, organizationID: UUID, projectID: UUID, status: ScanStatus, scanTypes: [ScanType], artifactURL: String,
        artifactSHA256: String?, attempt: Int, timeoutSeconds: Int, labels: [String: String], failureReason: String?,
        counts: SeverityCounts, createdAt: Date, updatedAt: Date, finishedAt: Date?
    ) {
        self.id = id
        self.organizationID = organizationID
        self.projectID = projectID
        self.status = status
        self.scanTypes = scanTypes
        self.artifactURL = artifactURL
        self.artifactSHA256 = artifactSHA256
        self.attempt = attempt
        self.timeoutSeconds = timeoutSeconds
        self.labels = labels
        self.failureReason = failureReason
        self.counts = counts
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.finishedAt = finishedAt
    }
}

/// What a caller asks for when creating a scan.
public struct CreateScanRequest: Sendable, Hashable, Codable {
    public var project: ScanCreateMessage.ProjectReference
    public var scanTypes: [String]
    public var artifactURL: String
    public var artifactSHA256: String?
    public var timeoutSeconds: Int?
    public var labels: [String: String]

    public init(
        project: ScanCreateMessage.ProjectReference, scanTypes: [String], artifactURL: String,
        artifactSHA256: String? = nil, timeoutSeconds: Int? = nil, labels: [String: String] = [:]
    ) {
        self.project = project
        self.scanTypes = scanTypes
        self.artifactURL = artifactURL
        self.artifactSHA256 = artifactSHA256
        self.timeoutSeconds = timeoutSeconds
        self.labels = labels
    }

    /// Checks sizes and formats; returns the parsed scan types (none: the project's defaults).
    /// Every failure names its field.
    public func validated() throws(ScanServiceError) -> [ScanType] {
        if project.id == nil && (project.externalKey ?? "").isEmpty {
            throw .invalidArgument(field: "project", "give a project id or external_key")
        }
        if let key = project.externalKey,
            key.count > 200 || key.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F })
        {
            throw .invalidArgument(field: "project.external_key", "at most 200 characters, no control characters")
        }
        var types: [ScanType] = []
        for text in scanTypes {
            guard let type = ScanType(rawValue: text) else {
                throw .invalidArgument(
                    field: "scan_types", "unknown scan type '\(text.prefix(40))'; known: sast, secrets, iac, sca")
            }
            if types.contains(type) { throw .invalidArgument(field: "scan_types", "'\(text)' appears twice") }
            types.append(type)
        }
        let schemes = ["https://", "http://", "file://", "s3://"]
        if artifactURL.isEmpty || artifactURL.utf8.count > 2048 || !schemes.contains(where: artifactURL.hasPrefix)
            || !ASCII.isVisible(artifactURL)
        {
            throw .invalidArgument(
                field: "artifact.url", "an https, http, file or s3 URL of at most 2048 printable ASCII bytes")
        }
        if let sha = artifactSHA256, !ASCII.isLowercaseHex(sha, count: 64) {
            throw .invalidArgument(field: "artifact.sha256", "64 lowercase hex characters")
        }
        if let timeout = timeoutSeconds, !(30...86_400).contains(timeout) {
            throw .invalidArgument(field: "timeout_seconds", "between 30 and 86400")
        }
        try Self.validate(labels: labels)
        return types
    }

    /// Labels: at most 64; keys 1–63 characters of a-z 0-9 . _ - /; values at most 256 bytes.
    public static func validate(labels: [String: String]) throws(ScanServiceError) {
        if labels.count > 64 { throw .invalidArgument(field: "labels", "at most 64 labels") }
        for (key, value) in labels {
            let allowed = key.utf8.allSatisfy { byte in
                (byte >= 97 && byte <= 122) || (byte >= 48 && byte <= 57) || byte == 45 || byte == 46 || byte == 95
                    || byte == 47
            }
            if key.isEmpty || key.utf8.count > 63 || !allowed {
                throw .invalidArgument(field: "labels", "label keys are 1–63 characters of a-z 0-9 . _ - /")
            }
            if value.utf8.count > 256 { throw .invalidArgument(field: "labels.\(key)", "at most 256 bytes") }
            if value.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) {
                throw .invalidArgument(field: "labels.\(key)", "no control characters")
            }
        }
    }
}

/// The service layer's errors; each transport maps them (HTTP problem+json, gRPC status).
public struct ScanServiceError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable, Hashable {
        case invalidArgument, notFound, conflict, failedPrecondition, resourceExhausted, permissionDenied, unavailable
    }
    public var code: Code
    public var message: String
    /// The request field at fault, for invalid arguments.
    public var field: String?
    /// Seconds a caller should wait, for resource exhaustion.
    public var retryAfterSeconds: Int?

    public init(code: Code, message: String, field: String? = nil, retryAfterSeconds: Int? = nil) {
        self.code = code
        self.message = message
        self.field = field
        self.retryAfterSeconds = retryAfterSeconds
    }

    public static func invalidArgument(field: String, _ message: String) -> ScanServiceError {
        ScanServiceError(code: .invalidArgument, message: message, field: field)
    }

    public var description: String {
        "ScanServiceError(\(code.rawValue)\(field.map { ", field: \($0)" } ?? ""): \(message))"
    }
}

/// A finding as the API shows it.
public struct Finding: Sendable, Hashable {
    public var id: UUID
    public var scanID: UUID
    public var scanner: String
    public var ruleID: String
    public var severity: Severity
    public var title: String
    public var message: String
    public var path: String
    public var line: Int?
    public var column: Int?
    public var cwe: [String]
    public var fingerprint: String

    public init(
        id: UUID, scanID: UUID, scanner: String, ruleID: String, severity: Severity, title: String, message: String,
        path: String, line: Int?, column: Int?, cwe: [String], fingerprint: String
    ) {
        self.id = id
        self.scanID = scanID
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
    }
}
