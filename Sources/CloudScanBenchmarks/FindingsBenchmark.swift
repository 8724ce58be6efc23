import ArgumentParser
import CloudScanAMQP
import CloudScanAuth
import CloudScanCore
import CloudScanPostgres
import Foundation
import Logging
import Synchronization

/// `cloudscan-bench findings`: the Swift side of scripts/bench-findings.
struct FindingsBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "findings",
        abstract: "Findings ingestion: publish as runners do; write the same rows as a COPY file.",
        subcommands: [Publish.self, CopyFile.self])

    /// The n-th finding of a scan: the same rows whichever way they reach PostgreSQL. About the
    /// size of a real SARIF-derived finding (message, path, CWE, a raw result of ~350 bytes).
    static func finding(_ n: Int) -> FindingRecord {
        let severities: [Severity] = [.critical, .high, .high, .medium, .medium, .medium, .low, .low, .info]
        let rule = "rule-\(n % 97)"
        let path = "services/module\(n % 211)/handler\(n % 13).py"
        return FindingRecord(
            scanner: ["semgrep", "bandit", "gitleaks", "checkov"][n % 4], ruleID: rule,
            severity: severities[n % severities.count], title: "Possible injection through \(rule)",
            message: "User input reaches a dangerous call at line \(n % 5000) of \(path); validate or escape it.",
            path: path, line: n % 5000 + 1, column: n % 80 + 1, cwe: ["CWE-\(78 + n % 20)"],
            fingerprint: String(
                format: "%016llx%016llx", UInt64(n),
                UInt64(n).multipliedReportingOverflow(by: 0x9E37_79B9_7F4A_7C15).partialValue),
            raw: .object([
                "ruleId": .string(rule), "level": .string("warning"),
                "message": .object(["text": .string("User input reaches a dangerous call")]),
                "locations": .array([
                    .object([
                        "physicalLocation": .object([
                            "artifactLocation": .object(["uri": .string(path)]),
                            "region": .object([
                                "startLine": .int(n % 5000 + 1), "startColumn": .int(n % 80 + 1),
                                "snippet": .object(["text": .string("cursor.execute(query % user_input)")]),
                            ]),
                        ])
                    ])
                ]),
            ]))
    }

    static func scans(_ text: String) throws -> [UUID] {
        let ids = text.split(separator: ",").compactMap { UUID(uuidString: String($0)) }
        guard !ids.isEmpty else { throw ValidationError("--scans: a comma list of scan ids") }
        return ids
    }

    /// Each publisher plays one runner: its scan's findings in chunks of 500, confirmed.
    struct Publish: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "publish")
        @Option(name: .customLong("amqp-url")) var amqpURL: String
        @Option var organization: String
        @Option var scans: String
        @Option var secret: String
        @Option var total: Int = 1_000_000
        @Option var chunk: Int = 500
        @Option(help: "Messages in flight per publisher.") var inflight: Int = 4

        func run() async throws {
            var quiet = Logger(label: "bench")
            quiet.logLevel = .warning
            let logger = quiet
            let broker = try AMQPConfiguration(url: amqpURL)
            let scanIDs = try FindingsBench.scans(scans)
            guard let org = UUID(uuidString: organization) else { throw ValidationError("--organization") }
            let minter = try RunnerTokenMinter(secret: secret)
            let perScan = total / scanIDs.count
            let started = ContinuousClock.now
            let bytes = Counter()
            let chunk = self.chunk
            let inflight = self.inflight
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (index, scan) in scanIDs.enumerated() {
                    group.addTask {
                        let publisher = AMQPPublisher(
                            configuration: .init(broker: broker, connectionName: "bench-runner-\(index)"),
                            logger: logger)
                        let token = minter.token(scanID: scan, organizationID: org, attempt: 1)
                        let batches = (perScan + chunk - 1) / chunk
                        try await withThrowingTaskGroup(of: Void.self) { lanes in
                            for lane in 0..<inflight {
                                lanes.addTask {
                                    let encoder = MessageCoding.encoder()
                                    for batch in stride(from: lane, to: batches, by: inflight) {
                                        let first = index * perScan + batch * chunk
                                        let last = min(first + chunk, (index + 1) * perScan)
                                        let message = FindingsBatchMessage(
                                            scanID: scan, organizationID: org, attempt: 1, batchIndex: batch,
                                            runnerToken: token, findings: (first..<last).map(FindingsBench.finding))
                                        let body = Array(try encoder.encode(message))
                                        bytes.add(body.count)
                                        try await publisher.publish(
                                            AMQPMessage(
                                                body: body, type: MessageType.findingsBatch.rawValue,
                                                messageID: message.messageID,
                                                correlationID: scan.uuidString.lowercased(),
                                                headers: [MessageHeaders.organizationID: org.uuidString.lowercased()]),
                                            exchange: Exchanges.findings, routingKey: "findings.sast")
                                    }
                                }
                            }
                            try await lanes.waitForAll()
                        }
                        await publisher.close()
                    }
                }
                try await group.waitForAll()
            }
            let elapsed = ContinuousClock.now - started
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            let findings = perScan * scanIDs.count
            print(
                String(
                    format: "PUBLISHED findings=%d messages=%d bytes=%d seconds=%.2f findings_per_s=%.0f", findings,
                    scanIDs.count * ((perScan + chunk - 1) / chunk), bytes.value, seconds,
                    Double(findings) / seconds))
        }
    }

    /// The same rows as a COPY text file for `psql \copy` (the baseline).
    struct CopyFile: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "copyfile")
        @Option var organization: String
        @Option(help: "scan_id@scan_created_at pairs, comma separated.") var scans: String
        @Option var total: Int = 1_000_000
        @Option var out: String

        func run() async throws {
            let pairs = scans.split(separator: ",").map { $0.split(separator: "@", maxSplits: 1).map(String.init) }
            guard pairs.allSatisfy({ $0.count == 2 }) else { throw ValidationError("--scans id@created_at,…") }
            let perScan = total / pairs.count
            FileManager.default.createFile(atPath: out, contents: nil)
            guard let handle = FileHandle(forWritingAtPath: out) else { throw ValidationError("cannot write \(out)") }
            defer { try? handle.close() }
            var writer = PostgresCopyWriter.forFile { try handle.write(contentsOf: $0) }
            for (index, pair) in pairs.enumerated() {
                for n in index * perScan..<(index + 1) * perScan {
                    let f = FindingsBench.finding(n)
                    var raw = JSONText()
                    f.raw?.write(to: &raw)
                    try writer.writeRow([
                        organization, pair[0], pair[1], f.scanner, f.ruleID, f.severity.rawValue, f.title, f.message,
                        f.path, f.line.map(Int32.init), f.column.map(Int32.init), "{\(f.cwe!.joined(separator: ","))}",
                        f.fingerprint, raw.text,
                    ])
                }
            }
            try writer.flush()
        }
    }
}

final class Counter: Sendable {
    private let total = Mutex(0)
    func add(_ n: Int) { total.withLock { $0 += n } }
    var value: Int { total.withLock { $0 } }
}
