import CloudScanAMQP
import CloudScanArchive
import CloudScanCore
import Foundation
import Logging

/// `cloudscan runner`: one scan attempt, inside a Job's pod or as a local process.
///
/// Reports `started`, then a heartbeat every ``Configuration/heartbeatInterval``; fetches and
/// safely extracts the artifact; runs the scanners of the requested types; publishes findings in
/// chunks (≤ 500 findings, ≤ 512 KiB a message) with publisher confirms as each scanner
/// finishes; ends with `completed` (counts by severity, each scanner's outcome and duration,
/// `partial` with the reason when a scanner failed or timed out) or `failed` (reason). Every
/// message carries the attempt's runner token, which the writers check.
public struct Runner: Sendable {
    public struct Configuration: Sendable {
        public var scanID: UUID
        public var organizationID: UUID
        public var attempt: Int
        public var scanTypes: [ScanType]
        public var artifactURL: String
        public var artifactSHA256: String?
        public var timeoutSeconds: Int
        public var runnerToken: String
        public var traceparent: String?
        public var heartbeatInterval: Duration
        public var workDirectory: String
        public var archiveLimits: ArchiveLimits
        public var executor: ScanExecutor.Configuration
        public var fetcher: ArtifactFetcher

        public init(
            scanID: UUID, organizationID: UUID, attempt: Int, scanTypes: [ScanType], artifactURL: String,
            artifactSHA256: String?, timeoutSeconds: Int, runnerToken: String, traceparent: String? = nil,
            heartbeatInterval: Duration = .seconds(30), workDirectory: String,
            archiveLimits: ArchiveLimits = .init(), executor: ScanExecutor.Configuration,
            fetcher: ArtifactFetcher = .init()
        ) {
            self.scanID = scanID
            self.organizationID = organizationID
            self.attempt = attempt
            self.scanTypes = scanTypes
            self.artifactURL = artifactURL
            self.artifactSHA256 = artifactSHA256
            self.timeoutSeconds = timeoutSeconds
            self.runnerToken = runnerToken
            self.traceparent = traceparent
            self.heartbeatInterval = heartbeatInterval
            self.workDirectory = workDirectory
            self.archiveLimits = archiveLimits
            self.executor = executor
            self.fetcher = fetcher
        }
    }

    /// How the attempt ended, as reported.
    public enum Result: Sendable, Equatable {
        case completed(partial: Bool)
        case failed(reason: String)
    }

    let configuration: Configuration
    let publisher: AMQPPublisher
    let logger: Logger

    public init(configuration: Configuration, publisher: AMQPPublisher, logger: Logger) {
        self.configuration = configuration
        self.publisher = publisher
        self.logger = logger
    }

    public func run() async throws -> Result {
        let deadline = ContinuousClock.now + .seconds(configuration.timeoutSeconds)
        try await report(.init(kind: .started))
        let heartbeat = Task {
            var beat = 0
            while !Task.isCancelled {
                try await Task.sleep(for: configuration.heartbeatInterval)
                beat += 1
                try? await report(.init(kind: .heartbeat), sequence: beat)
            }
        }
        defer { heartbeat.cancel() }
        let work =
            configuration.workDirectory
            + "/cloudscan-\(configuration.scanID.uuidString.lowercased())-\(configuration.attempt)"
        try? FileManager.default.removeItem(atPath: work)
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }

        let source = work + "/src"
        do {
            let archive = try await configuration.fetcher.fetch(
                url: configuration.artifactURL, sha256: configuration.artifactSHA256, into: work)
            let summary = try ArchiveExtractor.extract(
                archive: archive, into: source, limits: configuration.archiveLimits)
            logger.info(
                "artifact extracted", metadata: ["files": "\(summary.files)", "bytes": "\(summary.bytes)"])
        } catch let error as ArtifactFetcher.FetchError {
            if let detail = error.detail { logger.warning("artifact not fetched", metadata: ["detail": "\(detail)"]) }
            return try await fail(reason: error.reason, message: error.message)
        } catch let error as ArchiveError {
            // A local file that is not an archive reads as one that is not there: the reason must
            // not tell which paths exist on the host.
            if configuration.artifactURL.hasPrefix("file://") && [.unsupported, .corrupt].contains(error.reason) {
                logger.warning("artifact is not an archive", metadata: ["detail": "\(error.message)"])
                return try await fail(
                    reason: ArtifactFetcher.FetchError.unavailable.reason,
                    message: ArtifactFetcher.FetchError.unavailable.message)
            }
            return try await fail(reason: error.reason.rawValue, message: error.message)
        }

        let executor = ScanExecutor(configuration: configuration.executor, logger: logger)
        var counts = SeverityCounts()
        var outcomes: [StatusReportMessage.ScannerOutcome] = []
        var batchIndex = 0
        try await executor.scan(root: source, types: configuration.scanTypes, workDirectory: work, deadline: deadline) {
            result in
            outcomes.append(result.outcome)
            for finding in result.findings { counts.add(finding.severity) }
            batchIndex = try await publishFindings(
                result.findings, scanType: result.scanner.scanType, startingAt: batchIndex)
        }
        let notOK = outcomes.filter { $0.outcome == .failed || $0.outcome == .timedOut }
        let skippedSCA = outcomes.filter { $0.outcome == .skipped && $0.reason == "advisory database unavailable" }
        let partial = !notOK.isEmpty || !skippedSCA.isEmpty
        let reason: String? =
            partial
            ? (notOK + skippedSCA).map { "\($0.name) \($0.outcome.rawValue): \($0.reason ?? "-")" }.joined(
                separator: "; ")
            : nil
        if outcomes.isEmpty {
            return try await fail(reason: "no_scanners", message: "no scanner is configured for the requested types")
        }
        if !outcomes.contains(where: { $0.outcome == .ok }) && !notOK.isEmpty {
            return try await fail(reason: "scanners_failed", message: reason ?? "every scanner failed")
        }
        try await report(
            .init(
                kind: .completed, findingsBatches: batchIndex, counts: counts, scanners: outcomes, partial: partial,
                reason: partial ? "partial" : nil, message: reason.map { String($0.prefix(4096)) }))
        return .completed(partial: partial)
    }

    private func fail(reason: String, message: String) async throws -> Result {
        logger.error("scan failed", metadata: ["reason": "\(reason)", "message": "\(message)"])
        try await report(.init(kind: .failed, reason: reason, message: String(message.prefix(4096))))
        return .failed(reason: reason)
    }

    /// What a report says besides the scan's identity.
    struct ReportBody {
        var kind: StatusReportMessage.Kind
        var findingsBatches: Int? = nil
        var counts: SeverityCounts? = nil
        var scanners: [StatusReportMessage.ScannerOutcome]? = nil
        var partial: Bool? = nil
        var reason: String? = nil
        var message: String? = nil
    }

    func report(_ body: ReportBody, sequence: Int? = nil) async throws {
        let report = StatusReportMessage(
            scanID: configuration.scanID, organizationID: configuration.organizationID,
            attempt: configuration.attempt, kind: body.kind, runnerToken: configuration.runnerToken,
            findingsBatches: body.findingsBatches, counts: body.counts, scanners: body.scanners,
            partial: body.partial, reason: body.reason.map { String($0.prefix(256)) }, message: body.message)
        var id = "\(configuration.scanID.uuidString.lowercased()):\(configuration.attempt):\(body.kind.rawValue)"
        if let sequence { id += ":\(sequence)" }
        try await publisher.publish(
            message(try MessageCoding.encoder().encode(report), type: .statusReport, id: id),
            exchange: Exchanges.status, routingKey: "status.\(body.kind.rawValue)")
    }

    /// Publishes findings in chunks; returns the next batch index.
    func publishFindings(_ findings: [FindingRecord], scanType: ScanType, startingAt index: Int) async throws -> Int {
        var next = index
        for chunk in Self.chunks(findings) {
            let batch = FindingsBatchMessage(
                scanID: configuration.scanID, organizationID: configuration.organizationID,
                attempt: configuration.attempt, batchIndex: next, runnerToken: configuration.runnerToken,
                findings: chunk)
            try await publisher.publish(
                message(try MessageCoding.encoder().encode(batch), type: .findingsBatch, id: batch.messageID),
                exchange: Exchanges.findings, routingKey: "findings.\(scanType.rawValue)")
            next += 1
        }
        return next
    }

    /// ≤ 500 findings and ≤ ``FindingsBatchMessage/maximumBytes`` encoded, splitting in halves.
    static func chunks(_ findings: [FindingRecord]) -> [[FindingRecord]] {
        var out: [[FindingRecord]] = []
        var start = 0
        while start < findings.count {
            let end = min(start + FindingsBatchMessage.maximumFindings, findings.count)
            out.append(contentsOf: split(Array(findings[start..<end])))
            start = end
        }
        return out
    }

    private static func split(_ findings: [FindingRecord]) -> [[FindingRecord]] {
        let size = (try? MessageCoding.encoder().encode(findings).count) ?? FindingsBatchMessage.maximumBytes
        if size <= FindingsBatchMessage.maximumBytes - 1024 || findings.count == 1 { return [findings] }
        let middle = findings.count / 2
        return split(Array(findings[..<middle])) + split(Array(findings[middle...]))
    }

    private func message(_ body: Data, type: MessageType, id: String) -> AMQPMessage {
        var headers = [MessageHeaders.organizationID: configuration.organizationID.uuidString.lowercased()]
        if let traceparent = configuration.traceparent { headers[MessageHeaders.traceparent] = traceparent }
        return AMQPMessage(
            body: [UInt8](body), type: type.rawValue, messageID: id,
            correlationID: configuration.scanID.uuidString.lowercased(), timestamp: Date(), appID: "cloudscan-runner",
            headers: headers)
    }
}

extension SeverityCounts {
    public mutating func add(_ severity: Severity) {
        switch severity {
        case .critical: critical += 1
        case .high: high += 1
        case .medium: medium += 1
        case .low: low += 1
        case .info: info += 1
        }
    }
}
