import CloudScanAMQP
import CloudScanCore
import CloudScanPostgres
import CloudScanTestSupport
import CloudScanWorkers
import Foundation
import Testing

/// The binaries: `cloudscan findings-writer` killed mid-flush, `cloudscan runner` over the sample
/// repository, and a runner written in Python against the documented contract.
@Suite("findings pipeline (processes)")
struct PipelineProcessTests {
    static let binary = TestDatabase.repositoryRoot.appendingPathComponent(".build/debug/cloudscan").path

    static func environment(_ h: WritersHarness) -> [String: String] {
        [
            "DATABASE_URL": TestDatabase.appURL,
            "DB_SCHEMA": h.db.schema, "AMQP_URL": h.brokerURL, "RUNNER_TOKEN_SECRET": WritersHarness.tokenSecret,
            "TOPOLOGY_FILE": TestDatabase.repositoryRoot.appendingPathComponent("topology/topology.json").path,
            "LOG_LEVEL": "info",
        ]
    }

    static func waitForLog(_ path: String, _ text: String, seconds: Double = 30) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            if let log = try? String(contentsOfFile: path, encoding: .utf8), log.contains(text) { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    @Test(
        "SIGKILL before COMMIT, then after COMMIT but before the ack: after a restart each finding exists exactly once")
    func killedMidFlush() async throws {
        try await WritersHarness.run("fwkill", writers: false) { h in
            let scan = try await h.dispatchedScan()
            for index in 0..<3 {
                try await h.publish(
                    h.batch(
                        scan, index: index,
                        findings: (index * 500..<(index + 1) * 500).map { WritersHarness.finding($0) }))
            }
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fwkill-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            var environment = Self.environment(h)

            // 1. Killed inside the transaction, before COMMIT: nothing was written.
            environment["CLOUDSCAN_FAULT"] = "findings-writer:before-commit"
            let log1 = directory.appendingPathComponent("1.log").path
            let first = try BackgroundCommand(
                [Self.binary, "findings-writer"], environment: environment, logFile: log1)
            #expect(try await Self.waitForLog(log1, "paused at before-commit"))
            #expect(await first.stop(SIGKILL) == 128 + SIGKILL)
            #expect(try await h.findingsCount(scan) == 0, "the transaction died with the process")

            // 2. Killed after COMMIT, before the ack: the rows are in, the messages come back.
            environment["CLOUDSCAN_FAULT"] = "findings-writer:after-commit"
            let log2 = directory.appendingPathComponent("2.log").path
            let second = try BackgroundCommand(
                [Self.binary, "findings-writer"], environment: environment, logFile: log2)
            #expect(try await Self.waitForLog(log2, "paused at after-commit"))
            let committed = try await h.findingsCount(scan)
            #expect(committed > 0 && committed <= 1500)
            #expect(await second.stop(SIGKILL) == 128 + SIGKILL)

            // 3. A clean writer takes the redeliveries (and one more batch behind them).
            environment["CLOUDSCAN_FAULT"] = nil
            let log3 = directory.appendingPathComponent("3.log").path
            let third = try BackgroundCommand(
                [Self.binary, "findings-writer"], environment: environment, logFile: log3)
            try await h.publish(h.batch(scan, index: 3, findings: [WritersHarness.finding(9999)]))
            #expect(try await h.eventually(30) { try await h.findingsCount(scan) == 1501 })
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await h.findingsCount(scan) == 1501, "each finding exactly once")
            #expect(try await h.scanState(scan).counted == 1501, "the counters counted each once")
            let batches = try await h.app.withTransaction(organizationID: h.organization) { c in
                try await c.query("SELECT count(*) FROM scan_findings_batches WHERE scan_id = \(scan)").single().decode(
                    Int.self, at: 0)
            }
            #expect(batches == 4)
            #expect(await third.stop(SIGTERM) == 0, "SIGTERM drains and exits cleanly")
        }
    }

    @Test("a runner written in Python (pika), following the documented contract: rows written, scan completed")
    func outsideRunner() async throws {
        try await WritersHarness.run("outside") { h in
            let scan = try await h.dispatchedScan()
            let root = TestDatabase.repositoryRoot
            let (status, output) = try await runCommandCapturingOutput([
                "/usr/bin/env", "CLOUDSCAN_RUNNER_TOKEN=\(h.token(scan))",
                root.appendingPathComponent(".venv/bin/python").path,
                root.appendingPathComponent("Tests/clients/outside_runner.py").path, h.brokerURL,
                scan.uuidString.lowercased(), h.organization.uuidString.lowercased(), "1",
                root.appendingPathComponent("topology/schemas").path,
            ])
            #expect(status == 0, "\(output)")
            #expect(try await h.eventually { try await h.scanState(scan).status == "completed" })
            let state = try await h.scanState(scan)
            #expect(state.counted == 5)
            #expect(state.events == ["queued", "dispatched", "running", "completed"])
            #expect(try await h.findingsCount(scan) == 5)
        }
    }

    @Test("cloudscan runner over the sample repository: started, findings by scanner, completed — end to end")
    func runnerEndToEnd() async throws {
        try await WritersHarness.run("runner") { h in
            let scan = try await h.dispatchedScan(types: ["sast", "secrets", "iac", "sca"])
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("runner-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let root = TestDatabase.repositoryRoot
            let archive = directory.appendingPathComponent("sample.tar.gz").path
            #expect(
                try await runCommand([
                    "tar", "-czf", archive, "-C", root.appendingPathComponent("Tests/Fixtures/sample-repo").path, ".",
                ]) == 0)
            let sha = try await runCommandCapturingOutput(["sha256sum", archive]).output.prefix(64)
            let log = directory.appendingPathComponent("runner.log").path
            let runner = try BackgroundCommand(
                [Self.binary, "runner"],
                environment: [
                    "CLOUDSCAN_SCAN_ID": scan.uuidString.lowercased(),
                    "CLOUDSCAN_ORGANIZATION_ID": h.organization.uuidString.lowercased(), "CLOUDSCAN_ATTEMPT": "1",
                    "CLOUDSCAN_SCAN_TYPES": "sast,secrets,iac,sca", "CLOUDSCAN_ARTIFACT_URL": "file://\(archive)",
                    "CLOUDSCAN_ARTIFACT_SHA256": String(sha), "CLOUDSCAN_TIMEOUT_SECONDS": "600",
                    "CLOUDSCAN_RUNNER_TOKEN": h.token(scan), "CLOUDSCAN_BROKER_URL": h.brokerURL,
                    "CLOUDSCAN_SCANNER_CATALOG": root.appendingPathComponent("scanners/scanners.json").path,
                    "CLOUDSCAN_OSV_DIR": root.appendingPathComponent("Tests/Fixtures/osv").path,
                    "TMPDIR": directory.path, "PATH": "/usr/local/bin:/usr/bin:/bin",
                ], logFile: log)
            #expect(try await h.eventually(240) { try await h.scanState(scan).status == "completed" })
            #expect(await runner.wait() == 0, "completed (exit 0)")
            let perScanner = try await h.app.withTransaction(organizationID: h.organization) { c in
                try await c.query(
                    "SELECT scanner, count(DISTINCT rule_id) FROM findings WHERE scan_id = \(scan) GROUP BY 1"
                )
                .map { (try $0.decode(String.self, at: 0), try $0.decode(Int.self, at: 1)) }
            }
            let counts = Dictionary(uniqueKeysWithValues: perScanner)
            #expect(counts["semgrep"] == 8 && counts["bandit"] == 8 && counts["checkov"] == 17, "\(counts)")
            #expect(counts["syft-osv"] == 3 && counts["gitleaks"] == 2 && counts["zizmor"] == 4, "\(counts)")
            #expect(counts.count == 11, "every scanner's findings arrived: \(counts)")
            let state = try await h.scanState(scan)
            #expect(state.counted == (try await h.findingsCount(scan)))
            #expect(state.events == ["queued", "dispatched", "running", "completed"])
            let reason = try await h.app.withTransaction(organizationID: h.organization) { c in
                try await c.query("SELECT reason FROM scan_events WHERE scan_id = \(scan) AND to_status = 'completed'")
                    .single().decode(String.self, at: 0)
            }
            #expect(reason == "completed", "every scanner ran and the advisory database was there")
        }
    }

    @Test(
        "cloudscan runner refuses a crafted archive: the scan fails with the archive's reason, nothing outside the root",
        arguments: [
            ("zip-slip.zip", "archive_path_escape"),
            ("nested-links.tar", "archive_link_escape"),
            ("link-through-link.tar.gz", "archive_link_escape"),
            // A damaged local file reads as one that is not there (no oracle on host files); the
            // point is that the runner reports it instead of trapping.
            ("pax-short.tar", "artifact_unavailable"),
        ])
    func runnerRefusesMaliciousArchive(archive: String, expected: String) async throws {
        try await WritersHarness.run("runbad") { h in
            let scan = try await h.dispatchedScan()
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("runbad-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: directory) }
            let escapeName = "cloudscan-escape-\(UUID().uuidString.prefix(8))"
            let (made, output) = try await runCommandCapturingOutput([
                "env", "NO_BOMBS=1", "python3",
                TestDatabase.repositoryRoot.appendingPathComponent("Tests/clients/make_archives.py").path,
                directory.path, escapeName,
            ])
            #expect(made == 0, "\(output)")
            let work = directory.appendingPathComponent("work")
            try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
            let runner = try BackgroundCommand(
                [Self.binary, "runner"],
                environment: [
                    "CLOUDSCAN_SCAN_ID": scan.uuidString.lowercased(),
                    "CLOUDSCAN_ORGANIZATION_ID": h.organization.uuidString.lowercased(), "CLOUDSCAN_ATTEMPT": "1",
                    "CLOUDSCAN_SCAN_TYPES": "sast", "CLOUDSCAN_ARTIFACT_URL": "file://\(directory.path)/\(archive)",
                    "CLOUDSCAN_TIMEOUT_SECONDS": "60", "CLOUDSCAN_RUNNER_TOKEN": h.token(scan),
                    "CLOUDSCAN_BROKER_URL": h.brokerURL, "TMPDIR": work.path,
                    "CLOUDSCAN_SCANNER_CATALOG":
                        TestDatabase.repositoryRoot.appendingPathComponent("scanners/scanners.json").path,
                ], logFile: directory.appendingPathComponent("runner.log").path)
            #expect(try await h.eventually(60) { try await h.scanState(scan).status == "failed" })
            #expect(await runner.wait() == 2, "failed and reported (exit 2), no crash")
            let reason = try await h.app.withTransaction(organizationID: h.organization) { c in
                try await c.query("SELECT failure_reason FROM scans WHERE id = \(scan)").single().decode(
                    String.self, at: 0)
            }
            #expect(reason == expected)
            // Nothing the archive named exists anywhere a path-string extraction would have put it:
            // the work directory is gone, and no ancestor up to "/" holds the escaping link.
            #expect((try? FileManager.default.contentsOfDirectory(atPath: work.path)) == [])
            var ancestor = work.path
            while true {
                var info = stat()
                if lstat(ancestor + "/" + escapeName, &info) == 0 {
                    Issue.record("a link escaped into \(ancestor)")
                    unlink(ancestor + "/" + escapeName)
                }
                for level in 0..<16 where lstat(ancestor + "/l\(level)", &info) == 0 && ancestor != work.path {
                    if (info.st_mode & S_IFMT) == S_IFLNK {
                        Issue.record("link l\(level) escaped into \(ancestor)")
                    }
                }
                if ancestor == "/" || ancestor.isEmpty { break }
                let parent = String(ancestor[..<(ancestor.lastIndex(of: "/") ?? ancestor.startIndex)])
                ancestor = parent.isEmpty ? "/" : parent
            }
        }
    }

    @Test(
        "a scanner cannot read the runner's token or broker URL: not in its environment, and the runner's /proc environ is closed to it (runner and scanner as an unprivileged user)"
    )
    func scannersCannotReadTheRunnersSecrets() async throws {
        try await WritersHarness.run("probe") { h in
            let scan = try await h.dispatchedScan()
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("probe-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            // A catalog of one "scanner" that does what a hostile one would, as the same user.
            let probe = directory.appendingPathComponent("probe.sh").path
            try """
            #!/bin/sh
            if cat /proc/$PPID/environ >/dev/null 2>&1; then proc=readable; else proc=denied; fi
            if env | grep -q 'CLOUDSCAN_RUNNER_TOKEN\\|CLOUDSCAN_BROKER_URL'; then env=inherited; else env=clean; fi
            echo "$proc $env" > "$PROBE_RESULT"
            printf '{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"probe"}},"results":[]}]}' > "$1/result.sarif"
            """.write(toFile: probe, atomically: true, encoding: .utf8)
            let result = directory.appendingPathComponent("result.txt").path
            let catalog = directory.appendingPathComponent("catalog.json").path
            try """
            {"scanners":[{"name":"probe","scan_type":"sast","command":["sh","{config}/probe.sh","{out}"],
              "environment":{"PROBE_RESULT":"\(result)"}}]}
            """.write(toFile: catalog, atomically: true, encoding: .utf8)
            let archive = directory.appendingPathComponent("a.tar.gz").path
            #expect(
                try await runCommand(["tar", "-czf", archive, "-C", TestDatabase.repositoryRoot.path, "Package.swift"])
                    == 0)
            // Everything the unprivileged runner touches is open to it.
            #expect(try await runCommand(["chmod", "-R", "a+rwX", directory.path]) == 0)
            let runner = try BackgroundCommand(
                [
                    "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", Self.binary, "runner",
                ],
                environment: [
                    "CLOUDSCAN_SCAN_ID": scan.uuidString.lowercased(),
                    "CLOUDSCAN_ORGANIZATION_ID": h.organization.uuidString.lowercased(), "CLOUDSCAN_ATTEMPT": "1",
                    "CLOUDSCAN_SCAN_TYPES": "sast", "CLOUDSCAN_ARTIFACT_URL": "file://\(archive)",
                    "CLOUDSCAN_TIMEOUT_SECONDS": "60", "CLOUDSCAN_RUNNER_TOKEN": h.token(scan),
                    "CLOUDSCAN_BROKER_URL": h.brokerURL, "CLOUDSCAN_SCANNER_CATALOG": catalog,
                    "TMPDIR": directory.path, "HOME": directory.path, "PATH": "/usr/local/bin:/usr/bin:/bin",
                ], logFile: directory.appendingPathComponent("runner.log").path)
            #expect(try await h.eventually(60) { try await h.scanState(scan).status == "completed" })
            #expect(await runner.wait() == 0)
            let seen = try String(contentsOfFile: result, encoding: .utf8).trimmingCharacters(
                in: .whitespacesAndNewlines)
            #expect(seen == "denied clean", "what the probe could see: \(seen)")
        }
    }

    @Test(
        "the runners' broker user from `cloudscan topology export --runner-user`: publishes findings and status, and nothing else (no commands, no reads, no declarations)"
    )
    func runnerBrokerUser() async throws {
        let id = UUID().uuidString.prefix(8).lowercased()
        let vhost = "runner-user-\(id)"
        let user = "cloudscan-runner-\(id)"
        let password = "runner-password-\(id)-0123456789"
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("runner-user-\(id)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let definitions = directory.appendingPathComponent("definitions.json").path
        let export = try BackgroundCommand(
            [Self.binary, "topology", "export", "--vhost", vhost, "--runner-user", user, "--output", definitions],
            environment: [
                "RUNNER_AMQP_PASSWORD": password, "PATH": "/usr/bin:/bin",
                "TOPOLOGY_FILE": TestDatabase.repositoryRoot.appendingPathComponent("topology/topology.json").path,
            ], logFile: directory.appendingPathComponent("export.log").path)
        #expect(await export.wait() == 0)
        #expect(try await TestBroker.rabbitmqctl(["import_definitions", definitions]) == 0)
        defer {
            Task {
                _ = try? await TestBroker.rabbitmqctl(["delete_vhost", vhost])
                _ = try? await TestBroker.rabbitmqctl(["delete_user", user])
            }
        }
        let script = #"""
            import pika, sys
            url, = sys.argv[1:]
            def attempt(what, action):
                connection = pika.BlockingConnection(pika.URLParameters(url))
                channel = connection.channel()
                channel.confirm_delivery()
                try:
                    action(channel)
                    print(what, "allowed")
                except (pika.exceptions.ChannelClosedByBroker, pika.exceptions.UnroutableError,
                        pika.exceptions.NackError) as error:
                    print(what, "refused", getattr(error, "reply_code", ""))
                finally:
                    if connection.is_open:
                        connection.close()
            body = b"{}"
            attempt("findings", lambda c: c.basic_publish("cloudscan.findings", "findings.sast", body))
            attempt("status", lambda c: c.basic_publish("cloudscan.status", "status.started", body))
            attempt("commands", lambda c: c.basic_publish("cloudscan.commands", "scan.create", body))
            attempt("events", lambda c: c.basic_publish("cloudscan.events", "scan.completed", body))
            attempt("default-exchange", lambda c: c.basic_publish("", "cloudscan.dispatch", body))
            attempt("findings-other-key", lambda c: c.basic_publish("cloudscan.findings", "scan.create", body))
            attempt("read", lambda c: c.basic_get("cloudscan.findings.ingest"))
            attempt("declare", lambda c: c.queue_declare("mine", durable=True))
            """#
        let url = "amqp://\(user):\(password)@\(TestBroker.host):\(TestBroker.port)/\(vhost)"
        let (status, output) = try await runCommandCapturingOutput([
            TestDatabase.repositoryRoot.appendingPathComponent(".venv/bin/python").path, "-c", script, url,
        ])
        #expect(status == 0, "\(output)")
        let verdicts = Dictionary(
            output.split(separator: "\n").compactMap { line -> (String, String)? in
                let parts = line.split(separator: " ")
                return parts.count >= 2 ? (String(parts[0]), String(parts[1])) : nil
            }, uniquingKeysWith: { a, _ in a })
        #expect(verdicts["findings"] == "allowed" && verdicts["status"] == "allowed", "\(output)")
        for refused in ["commands", "events", "default-exchange", "findings-other-key", "read", "declare"] {
            #expect(verdicts[refused] == "refused", "\(refused): \(output)")
        }
    }
}
