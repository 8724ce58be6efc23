import CloudScanCore
import CloudScanPostgres
import CloudScanTestSupport
import Foundation
import Testing

/// The whole fleet as a newcomer runs it: `cloudscan dev` (its own schema, virtual host and
/// ports), the README's sample scan (`scripts/sample_scan.py`: one scan created over HTTP, one over
/// gRPC, followed by WatchScan), real scanners on the sample repository, and a webhook receiver.
@Suite("end to end (cloudscan dev, real scanners)")
struct EndToEndTests {
    static let binary = TestDatabase.repositoryRoot.appendingPathComponent(".build/debug/cloudscan").path

    static func freePort() async throws -> Int {
        let (_, output) = try await runCommandCapturingOutput([
            "python3", "-c",
            "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])",
        ])
        return try #require(Int(output.trimmingCharacters(in: .whitespacesAndNewlines)))
    }

    /// Prometheus text as `name{labels}` → value (comments skipped).
    static func samples(_ text: String) -> [String: Double] {
        var values: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
                continue
            }
            values[String(line[..<space])] = value
        }
        return values
    }

    @Test(
        "HTTP and gRPC creates → relay → dispatcher → local runners (real scanners) → writers → completed; findings, events in order, a signed webhook per scan, metrics"
    )
    func sampleScans() async throws {
        await FleetVirtualHosts.shared.acquire()
        defer { Task { await FleetVirtualHosts.shared.release() } }
        let vhost = "test-e2e-\(UUID().uuidString.prefix(8).lowercased())"
        try await TestBroker.addVirtualHost(vhost)
        defer { Task { await TestBroker.deleteVirtualHost(vhost) } }
        try await TestDatabase.withSchema("e2e") { db in
            let owner = PostgresClient(
                configuration: db.ownerConfiguration(maximumConnections: 2), logger: TestDatabase.logger("e2e"))
            defer { Task { await owner.shutdown() } }
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("e2e-\(UUID())")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let (httpPort, grpcPort) = (try await Self.freePort(), try await Self.freePort())
            let log = directory.appendingPathComponent("dev.log").path
            let dev = try BackgroundCommand(
                [Self.binary, "dev"],
                environment: [
                    "DATABASE_URL":
                        "postgresql://\(TestDatabase.ownerUser):\(TestDatabase.ownerPassword)@\(TestDatabase.host):\(TestDatabase.port)/\(TestDatabase.database)",
                    "DB_SCHEMA": db.schema,
                    "AMQP_URL":
                        "amqp://\(TestBroker.user):\(TestBroker.password)@\(TestBroker.host):\(TestBroker.port)/\(vhost)",
                    "HTTP_PORT": String(httpPort), "GRPC_PORT": String(grpcPort),
                    "CLOUDSCAN_OSV_DIR": TestDatabase.repositoryRoot.appendingPathComponent("Tests/Fixtures/osv").path,
                    "LOG_LEVEL": "info", "LOG_FORMAT": "json",
                ], logFile: log)
            func devLog() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
            do {
                let deadline = ContinuousClock.now + .seconds(60)
                while !devLog().contains("cloudscan dev is up"), ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(100))
                }
                try #require(devLog().contains("cloudscan dev is up"), "\(devLog().suffix(3000))")
                // The sample organization (as the admin API will make it).
                let (org, _) = try await TestDatabase.seedOrganization(owner, projectKey: "sample")
                let base = "http://127.0.0.1:\(httpPort)"
                // A webhook receiver checking signatures with Python's hmac, subscribed over HTTP.
                let hooks = directory.appendingPathComponent("hooks")
                try FileManager.default.createDirectory(at: hooks, withIntermediateDirectories: true)
                let portFile = hooks.appendingPathComponent("port").path
                let secret = "whsec_end-to-end-secret"
                let receiver = try BackgroundCommand(
                    [
                        "python3",
                        TestDatabase.repositoryRoot.appendingPathComponent("Tests/clients/webhook_receiver.py").path,
                        hooks.path, secret, portFile,
                    ], environment: [:], logFile: hooks.appendingPathComponent("receiver.log").path)
                defer { Task { _ = await receiver.stop(SIGKILL) } }
                var hookPort: Int?
                for _ in 0..<200 where hookPort == nil {
                    hookPort = (try? String(contentsOfFile: portFile, encoding: .utf8)).flatMap { Int($0) }
                    if hookPort == nil { try await Task.sleep(for: .milliseconds(25)) }
                }
                let (_, subscribed) = try await runCommandCapturingOutput([
                    "curl", "-s", "-X", "POST", "\(base)/api/v1/webhooks", "-H", "X-Cloudscan-Organization: \(org)",
                    "-H", "X-Cloudscan-Roles: org-admin",
                    "-H", "Content-Type: application/json", "-d",
                    #"{"url":"http://127.0.0.1:\#(try #require(hookPort))/hook/e2e","secret":"\#(secret)","events":["scan.completed"]}"#,
                ])
                #expect(subscribed.contains("\"id\""), "\(subscribed)")
                // The README's sample scan.
                let archive = directory.appendingPathComponent("sample.tgz").path
                #expect(
                    try await runCommand([
                        "tar", "-czf", archive, "-C",
                        TestDatabase.repositoryRoot.appendingPathComponent("Tests/Fixtures/sample-repo").path, ".",
                    ]) == 0)
                let (status, output) = try await runCommandCapturingOutput([
                    TestDatabase.repositoryRoot.appendingPathComponent(".venv/bin/python").path,
                    TestDatabase.repositoryRoot.appendingPathComponent("scripts/sample_scan.py").path,
                    "--org", org.uuidString.lowercased(), "--artifact", "file://\(archive)", "--http", base,
                    "--grpc", "127.0.0.1:\(grpcPort)", "--timeout", "300",
                ])
                print(output)
                #expect(status == 0, "both scans completed: \(output.suffix(3000))")
                let ids = output.split(separator: "\n").compactMap { line -> String? in
                    guard line.hasPrefix("created over ") else { return nil }
                    return line.split(separator: " ").dropFirst(3).first.map(String.init)
                }
                try #require(ids.count == 2, "\(output)")
                // Each scan's findings: all 11 scanners, 61 findings (3 critical, 36 high, 12 medium, 10 low).
                let totals = output.split(separator: "\n").filter { $0.hasPrefix("  all ") }.map {
                    $0.split(separator: " ").map(String.init)
                }
                #expect(totals == Array(repeating: ["all", "3", "36", "12", "10", "0", "61"], count: 2), "\(output)")
                #expect(output.contains("syft-osv") && output.contains("zizmor") && output.contains("semgrep"))
                // The timeline of each scan, in order.
                for id in ids {
                    let events = try await owner.withTransaction(organizationID: org) { c in
                        try await c.query(
                            "SELECT to_status FROM scan_events WHERE scan_id = \(id)::uuid ORDER BY id"
                        ).map { try $0.decode(String.self, at: 0) }
                    }
                    #expect(events == ["queued", "dispatched", "running", "completed"], "\(id): \(events)")
                }
                // One signed scan.completed delivery per scan.
                let deliveries = hooks.appendingPathComponent("e2e.jsonl")
                let deadline2 = ContinuousClock.now + .seconds(30)
                var received: [[String: Any]] = []
                while received.count < 2, ContinuousClock.now < deadline2 {
                    received = ((try? String(contentsOf: deliveries, encoding: .utf8)) ?? "").split(separator: "\n")
                        .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                    try await Task.sleep(for: .milliseconds(100))
                }
                #expect(received.count == 2, "\(received)")
                #expect(
                    received.allSatisfy {
                        $0["verified"] as? Bool == true && $0["event"] as? String == "scan.completed"
                    })
                let delivered = Set(received.compactMap { ($0["body"] as? [String: Any])?["scan_id"] as? String })
                #expect(delivered == Set(ids), "\(delivered) vs \(ids)")
                // W3C trace context end to end: sample_scan.py sent a traceparent with each create;
                // API → outbox → AMQP → dispatcher → runner's environment → its status and findings
                // messages → the completion event → the notifier → the webhook carries that trace id.
                for record in received {
                    let scan = (record["body"] as? [String: Any])?["scan_id"] as? String ?? "-"
                    let trace = output.split(separator: "\n").first { $0.hasPrefix("trace \(scan) ") }?
                        .split(separator: " ").last.map(String.init)
                    let header = record["traceparent"] as? String ?? ""
                    #expect(
                        trace != nil && header.split(separator: "-").dropFirst().first.map(String.init) == trace,
                        "\(scan): webhook traceparent \(header), sent \(trace ?? "-")")
                }
                #expect(
                    received.allSatisfy {
                        (($0["body"] as? [String: Any])?["counts"] as? [String: Any])?["critical"] as? Int == 3
                    })
                // JSON logs: the dispatcher's and the status writer's lines about each scan carry its
                // scan_id, organization_id and the trace it was created with.
                let lines = devLog().split(separator: "\n").compactMap {
                    try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
                }
                #expect(lines.count > 20, "JSON lines: \(devLog().suffix(2000))")
                for id in ids {
                    let trace = output.split(separator: "\n").first { $0.hasPrefix("trace \(id) ") }?
                        .split(separator: " ").last.map(String.init)
                    for message in ["runner started", "status report applied"] {
                        let line = lines.first { $0["msg"] as? String == message && $0["scan_id"] as? String == id }
                        #expect(line?["trace_id"] as? String == trace, "\(message) \(id): \(line ?? [:])")
                        #expect(line?["organization_id"] as? String == org.uuidString.lowercased())
                        #expect((line?["span_id"] as? String)?.count == 16)
                    }
                }
                // Metrics moved: two scans created (one per transport), requests counted per route.
                var metrics = ""
                var samples: [String: Double] = [:]
                let deadline3 = ContinuousClock.now + .seconds(15)
                repeat {
                    metrics = try await runCommandCapturingOutput(["curl", "-s", "\(base)/metrics"]).1
                    samples = Self.samples(metrics)
                    if samples[#"cloudscan_scans_total{status="completed"}"#] == 2,
                        samples[#"cloudscan_messages_handled_total{queue="cloudscan.notify",outcome="ack"}"#] == 2
                    {
                        break
                    }
                    try await Task.sleep(for: .milliseconds(200))
                } while ContinuousClock.now < deadline3
                let dump = String(metrics.prefix(20000))
                #expect(metrics.contains(#"cloudscan_scans_total{status="queued"} 2"#), "\(dump)")
                #expect(metrics.contains(#"transport="grpc""#) && metrics.contains(#"route="CreateScan""#))
                #expect(metrics.contains(#"route="GET /api/v1/scans/{id}/findings",code="200""#))
                // Every state change (counted as the relay publishes its scan.<status> event), each
                // scan's duration, the findings by severity.
                for status in ["dispatched", "running", "completed"] {
                    #expect(samples[#"cloudscan_scans_total{status="\#(status)"}"#] == 2, "\(status): \(dump)")
                }
                #expect(samples["cloudscan_scan_duration_seconds_count"] == 2, "\(dump)")
                for (severity, count) in [("critical", 6.0), ("high", 72), ("medium", 24), ("low", 20)] {
                    #expect(samples[#"cloudscan_findings_total{severity="\#(severity)"}"#] == count, "\(severity)")
                }
                // Per queue: handled by outcome, nothing in flight, durations; the findings writer's
                // batches hold every row; confirms timed; the outbox's lag measured; depths sampled.
                #expect(samples[#"cloudscan_messages_handled_total{queue="cloudscan.dispatch",outcome="ack"}"#] == 2)
                #expect(samples[#"cloudscan_messages_handled_total{queue="cloudscan.notify",outcome="ack"}"#] == 2)
                #expect(
                    (samples[#"cloudscan_messages_handled_total{queue="cloudscan.status.ingest",outcome="ack"}"#] ?? 0)
                        >= 4)
                #expect(samples[#"cloudscan_batch_rows_sum{queue="cloudscan.findings.ingest"}"#] == 122, "\(dump)")
                #expect(
                    samples[#"cloudscan_messages_handled_total{queue="cloudscan.findings.ingest",outcome="ack"}"#]
                        == samples[#"cloudscan_batch_messages_sum{queue="cloudscan.findings.ingest"}"#])
                for queue in ["cloudscan.dispatch", "cloudscan.status.ingest", "cloudscan.findings.ingest"] {
                    #expect(samples[#"cloudscan_messages_in_flight{queue="\#(queue)"}"#] == 0, "\(queue)")
                    #expect((samples[#"cloudscan_handler_duration_seconds_count{queue="\#(queue)"}"#] ?? 0) > 0)
                    #expect(samples[#"cloudscan_messages_failed_total{queue="\#(queue)"}"#] == 0, "\(queue)")
                }
                #expect(
                    (samples[#"cloudscan_publishes_total{exchange="cloudscan.events",result="confirmed"}"#] ?? 0) >= 6)
                #expect((samples[#"cloudscan_publish_confirm_seconds_count{exchange="cloudscan.commands"}"#] ?? 0) >= 2)
                #expect(samples["cloudscan_outbox_lag_seconds"] != nil && samples["cloudscan_outbox_pending"] != nil)
                #expect(samples[#"cloudscan_queue_depth{queue="cloudscan.dispatch"}"#] != nil, "\(dump)")
            } catch {
                _ = await dev.stop(SIGTERM)
                throw error
            }
            #expect(await dev.stop(SIGTERM) == 0, "dev drains and exits 0: \(devLog().suffix(2000))")
        }
    }
}
